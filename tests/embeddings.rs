//! `/v1/embeddings` through the proxy, against a mock upstream that answers
//! real embeddings shapes and counts calls: each input is cached exactly, a
//! mixed batch sends only its new inputs upstream and gets every vector
//! back at its index, in either encoding, and nothing broken is cached.

mod common;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use base64::Engine;
use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

/// The vectors of an answer, decoded from floats or base64, by `index`.
fn vectors(got: &Got) -> Vec<Vec<f32>> {
    let v = got.json();
    let data = v["data"].as_array().unwrap_or_else(|| panic!("{v}"));
    let mut out = vec![Vec::new(); data.len()];
    for d in data {
        let i = d["index"].as_u64().unwrap() as usize;
        out[i] = match &d["embedding"] {
            Value::String(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            other => panic!("not a vector: {other}"),
        };
    }
    out
}

fn expected(inputs: &[Value]) -> Vec<Vec<f32>> {
    inputs.iter().map(|i| vector_for("", i, 8)).collect()
}

/// The inputs of the last request the upstream saw.
fn sent_upstream(up: &Mock) -> Vec<Value> {
    embedding_inputs(&serde_json::from_slice(&up.last().body).unwrap())
}

#[tokio::test]
async fn an_input_is_a_miss_then_an_exact_hit_and_another_input_misses() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let body = json!({"model": "text-embedding-3-small", "input": "The quick brown fox"});
    let miss = Call::embeddings(&body).send(&app).await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.cache(), "miss");
    settle(&app).await;
    let hit = Call::embeddings(&body).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(up.calls(), 1, "the hit must not reach the upstream");
    assert_eq!(vectors(&hit), vectors(&miss));
    assert_eq!(vectors(&hit), expected(&[json!("The quick brown fox")]));
    let h = hit.json();
    assert_eq!(h["object"], "list");
    assert_eq!(h["model"], "text-embedding-3-small");
    assert_eq!(h["data"][0]["object"], "embedding");
    assert_eq!(h["usage"]["prompt_tokens"], 0, "nothing was billed");
    assert_eq!(hit.header("x-modelcache-cached-inputs"), "1/1");

    // Nothing semantic: a paraphrase, another model or another size misses.
    for other in [
        json!({"model": "text-embedding-3-small", "input": "The quick brown fox."}),
        json!({"model": "text-embedding-3-large", "input": "The quick brown fox"}),
        json!({"model": "text-embedding-3-small", "input": "The quick brown fox", "dimensions": 4}),
    ] {
        let got = Call::embeddings(&other).send(&app).await;
        assert_eq!(got.cache(), "miss", "{other}");
    }
    assert_eq!(up.calls(), 4);
    app.shutdown().await;
}

#[tokio::test]
async fn a_mixed_batch_sends_only_new_inputs_and_answers_in_input_order() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let first = Call::embeddings(&json!({"model": "e", "input": ["alpha", "beta"]}))
        .send(&app)
        .await;
    assert_eq!(first.cache(), "miss");
    settle(&app).await;

    for (n, encoding) in [(2, None), (3, Some("base64")), (4, Some("float"))] {
        // New words each round, around the two cached ones, one of them twice.
        let (x, y) = (json!(format!("gamma {n}")), json!(format!("delta {n}")));
        let inputs = [
            x.clone(),
            json!("alpha"),
            y.clone(),
            json!("beta"),
            x.clone(),
        ];
        let mut body = json!({"model": "e", "input": inputs});
        if let Some(e) = encoding {
            body["encoding_format"] = json!(e);
        }
        let got = Call::embeddings(&body).send(&app).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.cache(), "miss");
        assert_eq!(up.calls(), n, "one upstream call per batch");
        assert_eq!(
            sent_upstream(&up),
            vec![x.clone(), y.clone()],
            "only the inputs the cache lacks go upstream, each once"
        );
        assert_eq!(vectors(&got), expected(&inputs), "{encoding:?}");
        let v = got.json();
        assert_eq!(v["data"].as_array().unwrap().len(), 5);
        let is_b64 = v["data"][0]["embedding"].is_string();
        assert_eq!(is_b64, encoding == Some("base64"));
        assert_eq!(v["model"], "e");
        assert_eq!(v["usage"]["prompt_tokens"], 4, "what the upstream billed");
        assert_eq!(got.header("x-modelcache-cached-inputs"), "2/5");
        assert!(!got.header("x-modelcache-request-id").is_empty());
        // The two inputs the cache answered were used: in the hit log.
        settle(&app).await;
        let log = admin(&app, "GET", "/admin/hits?limit=200", Value::Null)
            .await
            .json();
        let logged = log["hits"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["matched"] == "text###alpha" || h["matched"] == "text###beta")
            .count();
        assert_eq!(logged, 2 * (n - 1), "{log}");
        // The new inputs were written: now the whole batch is a hit.
        settle(&app).await;
        let again = Call::embeddings(&json!({"model": "e", "input": [y.clone(), x.clone()]}))
            .send(&app)
            .await;
        assert_eq!(again.cache(), "hit");
        assert_eq!(vectors(&again), expected(&[y, x]));
        assert_eq!(up.calls(), n);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn token_arrays_and_repeats_keep_their_positions() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let inputs = vec![json!([1, 2, 3]), json!([4]), json!([1, 2, 3])];
    let miss = Call::embeddings(&json!({"model": "e", "input": inputs}))
        .send(&app)
        .await;
    assert_eq!(miss.cache(), "miss");
    assert_eq!(vectors(&miss), expected(&inputs));
    settle(&app).await;
    let hit = Call::embeddings(&json!({"model": "e", "input": [[4], [1, 2, 3], [4]]}))
        .send(&app)
        .await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(
        vectors(&hit),
        expected(&[json!([4]), json!([1, 2, 3]), json!([4])])
    );
    // One token array as the whole input is one input.
    let single = Call::embeddings(&json!({"model": "e", "input": [1, 2, 3]}))
        .send(&app)
        .await;
    assert_eq!(single.cache(), "hit");
    assert_eq!(vectors(&single), expected(&[json!([1, 2, 3])]));
    // A string never passes for tokens.
    let text = Call::embeddings(&json!({"model": "e", "input": "[1,2,3]"}))
        .send(&app)
        .await;
    assert_eq!(text.cache(), "miss");
    assert_eq!(up.calls(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_broken_answer_is_never_cached_and_a_mixed_batch_gets_a_clear_502() {
    // Answers well until `broken` is set, then drops one vector of each batch.
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    let up = mock(Arc::new(move |seen: &Seen, _| {
        let body: Value = serde_json::from_slice(&seen.body).unwrap();
        let mut v = embeddings_json("", &body);
        if flag.load(Ordering::SeqCst) {
            v["data"].as_array_mut().unwrap().pop();
        }
        Reply::Full(
            200,
            vec![("content-type", "application/json".into())],
            Bytes::from(v.to_string()),
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    Call::embeddings(&json!({"model": "e", "input": "kept"}))
        .send(&app)
        .await;
    settle(&app).await;
    broken.store(true, Ordering::SeqCst);

    // Every input new: the answer is passed on as it came, and not cached.
    let all_new = Call::embeddings(&json!({"model": "e", "input": ["a", "b"]}))
        .send(&app)
        .await;
    assert_eq!(all_new.status, 200);
    assert_eq!(all_new.json()["data"].as_array().unwrap().len(), 1);
    settle(&app).await;
    let again = Call::embeddings(&json!({"model": "e", "input": "a"}))
        .send(&app)
        .await;
    assert_eq!(again.cache(), "miss", "a broken answer was cached");
    // Partly cached: a short answer cannot be merged, and the client is told.
    let mixed = Call::embeddings(&json!({"model": "e", "input": ["kept", "x", "y"]}))
        .send(&app)
        .await;
    assert_eq!(mixed.status, 502, "{}", mixed.text());
    assert_eq!(mixed.json()["error"]["code"], "modelcache_upstream_shape");
    settle(&app).await;
    broken.store(false, Ordering::SeqCst);
    let after = Call::embeddings(&json!({"model": "e", "input": ["x", "y"]}))
        .send(&app)
        .await;
    assert_eq!(
        after.cache(),
        "miss",
        "nothing of the broken answer was kept"
    );
    assert_eq!(up.calls(), 5);
    app.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_pass_through_and_bad_inputs_are_forwarded_uncached() {
    let up = mock(Arc::new(|seen: &Seen, _| {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        if body["input"] == "boom" {
            return Reply::Full(
                400,
                vec![("content-type", "application/json".into())],
                Bytes::from(r#"{"error":{"message":"bad input","type":"invalid_request_error"}}"#),
            );
        }
        Reply::Full(
            200,
            vec![("content-type", "application/json".into())],
            Bytes::from(embeddings_json("", &body).to_string()),
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    for _ in 0..2 {
        let got = Call::embeddings(&json!({"model": "e", "input": "boom"}))
            .send(&app)
            .await;
        assert_eq!(got.status, 400);
        assert_eq!(got.json()["error"]["message"], "bad input");
        settle(&app).await;
    }
    assert_eq!(up.calls(), 2, "an error is never cached");
    // An input of no known shape: forwarded untouched, never keyed.
    for _ in 0..2 {
        let got = Call::embeddings(&json!({"model": "e", "input": [{"text": "x"}]}))
            .send(&app)
            .await;
        assert_eq!(got.cache(), "bypass");
        settle(&app).await;
    }
    assert_eq!(up.calls(), 4);
    assert_eq!(
        up.last().body,
        Bytes::from(json!({"model": "e", "input": [{"text": "x"}]}).to_string())
    );
    app.shutdown().await;
}

#[tokio::test]
async fn two_tenants_never_share_vectors() {
    let (ua, ub) = (mock(llm_tagged("A")).await, mock(llm_tagged("B")).await);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[tenants]]\nname = \"alpha\"\nkeys_env = [\"ALPHA_KEY\"]\nupstream = {{ url = \"{}\" }}\n\n\
         [[tenants]]\nname = \"beta\"\nkeys_env = [\"BETA_KEY\"]\nupstream = {{ url = \"{}\" }}\n",
        ua.url(),
        ub.url()
    );
    let env = [("ALPHA_KEY", "key-alpha"), ("BETA_KEY", "key-beta")];
    let app = Gateway::new(settings_from(&text, dir.path(), &env))
        .start()
        .await;
    let body = json!({"model": "e", "input": "shared words"});
    for key in ["key-alpha", "key-beta"] {
        let got = Call::embeddings(&body).key(key).send(&app).await;
        assert_eq!(got.cache(), "miss", "{key}");
        settle(&app).await;
    }
    let a = Call::embeddings(&body).key("key-alpha").send(&app).await;
    let b = Call::embeddings(&body).key("key-beta").send(&app).await;
    assert_eq!((a.cache(), b.cache()), ("hit".into(), "hit".into()));
    assert_eq!(
        vectors(&a),
        vec![vector_for("A", &json!("shared words"), 8)]
    );
    assert_eq!(
        vectors(&b),
        vec![vector_for("B", &json!("shared words"), 8)]
    );
    assert_eq!((ua.calls(), ub.calls()), (1, 1));
    app.shutdown().await;
}
