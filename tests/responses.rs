//! OpenAI's `/v1/responses` through the proxy, against a mock upstream that
//! answers the API's JSON and event-stream shapes and counts calls: misses
//! and hits both ways, the event lifecycle of a replay, state
//! (`previous_response_id`, `conversation`) never served from cache,
//! chaining onto and fetching a minted id, reasoning items kept, and
//! unfinished answers never stored.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

fn ask_r(q: &str) -> Value {
    json!({"model": "gpt-test", "input": q})
}

fn streamed(body: &Value) -> Value {
    let mut b = body.clone();
    b["stream"] = json!(true);
    b
}

/// The events of a stream, each checked to name its type on its `event:`
/// line.
fn events(got: &Got) -> Vec<Value> {
    got.text()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (head, data) = e.split_once('\n').unwrap();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(head, format!("event: {}", v["type"].as_str().unwrap()));
            v
        })
        .collect()
}

/// The response of an answer: the JSON, or the completed event's.
fn response_of(got: &Got) -> Value {
    if got.header("content-type").starts_with("text/event-stream") {
        let evs = events(got);
        evs.last().unwrap()["response"].clone()
    } else {
        got.json()
    }
}

fn text_of(got: &Got) -> String {
    response_of(got)["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().clone())
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_miss_then_hits_streamed_or_not_each_way_with_a_consistent_lifecycle() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let q = ask_r("What is the capital of France?");
    let miss = Call::responses(&q).send(&app).await;
    assert_eq!(miss.cache(), "miss");
    settle(&app).await;
    let hit = Call::responses(&q).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(up.calls(), 1);
    assert_eq!(text_of(&hit), text_of(&miss));
    let h = hit.json();
    assert!(h["id"].as_str().unwrap().starts_with("resp_mc"));
    assert_eq!(h["object"], "response");
    assert_eq!(h["status"], "completed");
    assert_eq!(h["usage"], miss.json()["usage"]);

    // Streamed from the JSON entry: the full lifecycle.
    let sh = Call::responses(&streamed(&q)).send(&app).await;
    assert_eq!(sh.cache(), "hit");
    let evs = events(&sh);
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "response.created");
    assert_eq!(kinds[1], "response.in_progress");
    assert_eq!(*kinds.last().unwrap(), "response.completed");
    for k in [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let seqs: Vec<u64> = evs
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    let id = &evs[0]["response"]["id"];
    assert!(evs
        .iter()
        .filter_map(|e| e.get("response"))
        .all(|r| &r["id"] == id));
    assert_ne!(id, &h["id"], "each hit gets its own id");
    let deltas: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, text_of(&miss));

    // A streamed miss (its deltas padded), then hits both ways.
    let q2 = ask_r("Why is the sky blue?");
    let smiss = Call::responses(&streamed(&q2)).send(&app).await;
    assert_eq!(smiss.cache(), "miss");
    settle(&app).await;
    let shit = Call::responses(&streamed(&q2)).send(&app).await;
    assert_eq!(shit.cache(), "hit");
    assert_eq!(text_of(&shit), text_of(&smiss));
    assert!(
        !shit.text().contains("obfuscation"),
        "no padding in the cache"
    );
    let jhit = Call::responses(&q2).send(&app).await;
    assert_eq!(jhit.cache(), "hit");
    assert_eq!(text_of(&jhit), text_of(&smiss));
    // Another question misses.
    assert_eq!(
        Call::responses(&ask_r("Why is grass green?"))
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    assert_eq!(up.calls(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn requests_on_upstream_state_always_reach_the_upstream() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let q = ask_r("And in French?");
    let mut chained = q.clone();
    chained["previous_response_id"] = json!("resp_from_the_upstream");
    let mut conv = q.clone();
    conv["conversation"] = json!("conv_123");
    for body in [&chained, &conv] {
        for _ in 0..2 {
            let got = Call::responses(body).send(&app).await;
            assert_eq!(got.cache(), "bypass");
            settle(&app).await;
        }
    }
    assert_eq!(
        up.calls(),
        4,
        "every request on upstream state went upstream"
    );
    let seen: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert_eq!(seen["conversation"], "conv_123", "forwarded untouched");
    app.shutdown().await;
}

/// `q` asked twice: a miss, then a hit served under a minted id.
async fn minted_hit(app: &modelcache::app::RunningApp, q: &str) -> Got {
    Call::responses(&ask_r(q)).send(app).await;
    settle(app).await;
    let hit = Call::responses(&ask_r(q)).send(app).await;
    assert_eq!(hit.cache(), "hit");
    hit
}

#[tokio::test]
async fn a_minted_id_can_be_chained_onto_fetched_and_deleted() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let hit = minted_hit(&app, "What is the capital of France?").await;
    let minted = hit.json();
    let id = minted["id"].as_str().unwrap().to_string();

    // Fetched: the response as it was served.
    let got = Call::get(&format!("/v1/responses/{id}")).send(&app).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), minted);
    // A key the upstream has not accepted is the upstream's to judge.
    let calls = up.calls();
    Call::get(&format!("/v1/responses/{id}"))
        .key("sk-never-verified")
        .send(&app)
        .await;
    assert_eq!(
        up.calls(),
        calls + 1,
        "an unverified caller is not answered from memory"
    );

    // Chained: the upstream gets the whole conversation, never the minted id.
    let next =
        json!({"model": "gpt-test", "input": "And its population?", "previous_response_id": id});
    let chained = Call::responses(&next).send(&app).await;
    assert_eq!(chained.status, 200, "{}", chained.text());
    assert_eq!(up.calls(), 3);
    let seen: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert!(seen.get("previous_response_id").is_none(), "{seen}");
    let input = seen["input"].as_array().unwrap();
    assert_eq!(input.len(), 3);
    assert_eq!(input[0]["content"], "What is the capital of France?");
    assert_eq!(input[1]["type"], "message");
    assert_eq!(input[1]["role"], "assistant");
    assert_eq!(input[1]["content"][0]["text"], text_of(&hit));
    assert_eq!(input[2]["content"], "And its population?");
    assert_eq!(text_of(&chained), answer_for("And its population?", 3));

    // Deleted, then gone; an id the gateway never held is a clear 404.
    let del = Call::new("DELETE", &format!("/v1/responses/{id}"))
        .send(&app)
        .await;
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["deleted"], true);
    for gone in [id.as_str(), "resp_mcNeverMinted"] {
        let got = Call::get(&format!("/v1/responses/{gone}")).send(&app).await;
        assert_eq!(got.status, 404);
        assert_eq!(got.json()["error"]["code"], "modelcache_response_not_held");
        let mut c = next.clone();
        c["previous_response_id"] = json!(gone);
        let got = Call::responses(&c).send(&app).await;
        assert_eq!(got.status, 404);
    }
    // Ids the upstream minted are the upstream's business.
    let theirs = Call::get("/v1/responses/resp_up1").send(&app).await;
    assert_eq!(theirs.status, 200);
    assert_eq!(up.calls(), 4);
    app.shutdown().await;
}

#[tokio::test]
async fn reasoning_items_survive_a_streamed_miss_and_hit() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let mut q = streamed(&ask_r("Is 97 prime?"));
    q["reasoning"] = json!({"effort": "low", "summary": "auto"});
    q["include"] = json!(["reasoning.encrypted_content"]);
    let miss = Call::responses(&q).send(&app).await;
    settle(&app).await;
    let hit = Call::responses(&q).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(up.calls(), 1);
    let (a, b) = (response_of(&miss), response_of(&hit));
    assert_eq!(b["output"][0]["type"], "reasoning");
    assert_eq!(
        b["output"][0], a["output"][0],
        "the reasoning item as it came"
    );
    assert_eq!(b["output"][0]["encrypted_content"], "gAAAAABenc-opaque");
    let kinds: Vec<String> = events(&hit)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds
        .iter()
        .any(|k| k == "response.reasoning_summary_text.delta"));
    app.shutdown().await;
}

/// An upstream whose Responses answers are unfinished, one way per question.
fn unfinished() -> Handler {
    Arc::new(|seen: &Seen, n: usize| {
        let v: Value = serde_json::from_slice(&seen.body).unwrap();
        let q = responses_question(&v);
        let mut r = responses_json(&format!("resp_up{n}"), &answer_for(&q, n), None);
        match q.as_str() {
            "incomplete" => {
                r["status"] = json!("incomplete");
                r["incomplete_details"] = json!({"reason": "max_output_tokens"});
                Reply::Full(
                    200,
                    vec![("content-type", "application/json".into())],
                    Bytes::from(r.to_string()),
                )
            }
            "cut" => {
                let mut evs = responses_sse(&r);
                evs.pop();
                Reply::Chunks(vec![], evs, std::time::Duration::from_millis(1))
            }
            _ => {
                let mut evs = responses_sse(&r);
                let last = evs.len() - 1;
                evs[last] = Bytes::from(
                    "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":99,\"response\":{}}\n\n",
                );
                Reply::Chunks(vec![], evs, std::time::Duration::from_millis(1))
            }
        }
    })
}

#[tokio::test]
async fn incomplete_cut_or_failed_answers_are_never_stored() {
    let up = mock(unfinished()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let mut calls = 0;
    for (q, stream) in [("incomplete", false), ("cut", true), ("failed", true)] {
        let body = if stream {
            streamed(&ask_r(q))
        } else {
            ask_r(q)
        };
        for _ in 0..2 {
            let got = Call::responses(&body).send(&app).await;
            assert_ne!(got.cache(), "hit", "{q}");
            calls += 1;
            assert_eq!(up.calls(), calls, "{q} must reach the upstream every time");
            settle(&app).await;
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn two_tenants_share_neither_answers_nor_minted_ids() {
    let (ua, ub) = (mock(llm_tagged("A: ")).await, mock(llm_tagged("B: ")).await);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[tenants]]\nname = \"alpha\"\nkeys_env = [\"ALPHA_KEY\"]\nupstream = {{ url = \"{}\", anthropic_url = \"{}\" }}\n\n\
         [[tenants]]\nname = \"beta\"\nkeys_env = [\"BETA_KEY\"]\nupstream = {{ url = \"{}\", anthropic_url = \"{}\" }}\n",
        ua.url(),
        ua.url(),
        ub.url(),
        ub.url()
    );
    let env = [("ALPHA_KEY", "key-alpha"), ("BETA_KEY", "key-beta")];
    let app = Gateway::new(settings_from(&text, dir.path(), &env))
        .start()
        .await;
    let q = ask_r("Shared words, two tenants");
    let claude = json!({"model": "claude-test", "max_tokens": 64,
                        "messages": [{"role": "user", "content": "Shared words, two tenants"}]});
    let ask = |key: &str, responses_api: bool| {
        let call = if responses_api {
            Call::responses(&q)
        } else {
            Call::new("POST", "/v1/messages")
                .header("content-type", "application/json")
                .body(claude.to_string())
        };
        call.key(key)
    };
    for api in [true, false] {
        for key in ["key-alpha", "key-beta"] {
            assert_eq!(
                ask(key, api).send(&app).await.cache(),
                "miss",
                "{key} {api}"
            );
            settle(&app).await;
        }
    }
    let a = ask("key-alpha", true).send(&app).await;
    let b = ask("key-beta", true).send(&app).await;
    assert_eq!((a.cache(), b.cache()), ("hit".into(), "hit".into()));
    assert!(text_of(&a).starts_with("A: ") && text_of(&b).starts_with("B: "));
    let ma = ask("key-alpha", false).send(&app).await;
    let mb = ask("key-beta", false).send(&app).await;
    assert_eq!((ma.cache(), mb.cache()), ("hit".into(), "hit".into()));
    assert!(ma.text().contains("A: ") && mb.text().contains("B: "));
    // Alpha's minted id is nothing to beta.
    let id = a.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/responses/{id}");
    assert_eq!(
        Call::get(&path).key("key-alpha").send(&app).await.status,
        200
    );
    assert_eq!(
        Call::get(&path).key("key-beta").send(&app).await.status,
        404
    );
    let mut chained = ask_r("And then?");
    chained["previous_response_id"] = json!(id);
    let got = Call::responses(&chained).key("key-beta").send(&app).await;
    assert_eq!(got.status, 404);
    assert_eq!((ua.calls(), ub.calls()), (2, 2));
    app.shutdown().await;
}

#[tokio::test]
async fn a_minted_id_outlives_a_restart_in_the_tenants_store() {
    let (up, dir, app) = Gateway::with_mock_llm().await;
    let hit = minted_hit(&app, "What is the capital of France?").await;
    let id = hit.json()["id"].as_str().unwrap().to_string();
    settle(&app).await;
    app.shutdown().await;

    // A new process over the same data: nothing of it in memory.
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let got = Call::get(&format!("/v1/responses/{id}")).send(&app).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["id"], id.as_str());
    assert_eq!(text_of(&got), text_of(&hit));
    let next =
        json!({"model": "gpt-test", "input": "And its population?", "previous_response_id": id});
    let chained = Call::responses(&next).send(&app).await;
    assert_eq!(chained.status, 200, "{}", chained.text());
    let seen: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert!(seen.get("previous_response_id").is_none());
    assert_eq!(seen["input"].as_array().unwrap().len(), 3);
    // Deleted from the store too: gone after another restart.
    let del = Call::new("DELETE", &format!("/v1/responses/{id}"))
        .send(&app)
        .await;
    assert_eq!(del.status, 200);
    settle(&app).await;
    app.shutdown().await;
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let got = Call::get(&format!("/v1/responses/{id}")).send(&app).await;
    assert_eq!(got.status, 404);
    app.shutdown().await;
}

#[tokio::test]
async fn a_paraphrase_hits_through_the_real_model() {
    let (up, _dir, app) = Gateway::with_mock_llm_real_model().await;
    let mut q = ask_r("How do I reverse a list in Python?");
    q["instructions"] = json!("You are a helpful assistant.");
    let miss = Call::responses(&q).send(&app).await;
    settle(&app).await;
    let mut para = q.clone();
    para["input"] = json!([{"role": "user", "content": [
        {"type": "input_text", "text": "How can I reverse a list in Python?"}]}]);
    let hit = Call::responses(&para).send(&app).await;
    assert_eq!(hit.cache(), "hit", "{}", hit.header("cache-status"));
    assert_eq!(text_of(&hit), text_of(&miss));
    let mut other = q.clone();
    other["input"] = json!("How do I sort a list in Python?");
    assert_eq!(Call::responses(&other).send(&app).await.cache(), "miss");
    let mut other_instructions = q.clone();
    other_instructions["instructions"] = json!("Answer in French.");
    assert_eq!(
        Call::responses(&other_instructions)
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    assert_eq!(up.calls(), 3);
    app.shutdown().await;
}
