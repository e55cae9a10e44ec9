//! The remote embedding backend (`embedding.kind = "openai"`) against a mock
//! OpenAI-compatible `/v1/embeddings` endpoint: hits and misses decided by
//! its vectors, its key and model sent, batches; and its failures (HTTP
//! errors, timeouts, a dead endpoint) forward the request uncached, never
//! fail it.

mod common;

use std::{
    sync::{
        atomic::{AtomicU16, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use modelcache::embed::{Embedder, HashEmbedder};
use serde_json::{json, Value};

const KEY: &str = "sk-embedding-key-0123456789";

/// A mock embeddings endpoint: the hashing embedder's vectors (64
/// dimensions), or `status` when it is not 200, after `delay_ms`.
fn embeddings(status: Arc<AtomicU16>, delay_ms: Arc<AtomicU64>) -> Handler {
    Arc::new(move |seen: &Seen, _n| {
        let v: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let inputs: Vec<String> = v["input"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let code = status.load(Ordering::SeqCst);
        let body = if code == 200 {
            let vecs = HashEmbedder::new(64).embed_batch(&inputs).unwrap();
            // Out of order, as the API allows: the index decides.
            let data: Vec<Value> = vecs
                .iter()
                .enumerate()
                .rev()
                .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
                .collect();
            json!({"object": "list", "data": data, "model": v["model"]})
        } else {
            json!({"error": {"message": "overloaded", "type": "server_error"}})
        };
        let reply = Reply::Full(
            code,
            vec![("content-type", "application/json".into())],
            Bytes::from(body.to_string()),
        );
        match delay_ms.load(Ordering::SeqCst) {
            0 => reply,
            ms => Reply::Delay(Duration::from_millis(ms), Box::new(reply)),
        }
    })
}

async fn setup(
    dimensions: Option<usize>,
) -> (
    Mock,
    Mock,
    Arc<AtomicU16>,
    Arc<AtomicU64>,
    tempfile::TempDir,
    modelcache::app::RunningApp,
) {
    let up = mock(llm()).await;
    let status = Arc::new(AtomicU16::new(200));
    let delay = Arc::new(AtomicU64::new(0));
    let emb = mock(embeddings(status.clone(), delay.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let dims = dimensions.map_or(String::new(), |d| format!("dimensions = {d}\n"));
    let toml = format!(
        "[embedding]\nkind = \"openai\"\nurl = \"{}/v1/embeddings\"\nmodel = \"text-embedding-3-small\"\napi_key_env = \"EMB_KEY\"\ntimeout = \"300ms\"\n{dims}[cache]\nthreshold = 0.7\nverifier = false\n",
        emb.url()
    );
    let mut s = settings_from(&toml, dir.path(), &[("EMB_KEY", KEY)]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).real_model().start().await;
    (up, emb, status, delay, dir, app)
}

#[tokio::test]
async fn a_remote_endpoint_decides_hits_and_gets_the_key_and_model() {
    let (up, emb, _status, _delay, _dir, app) = setup(None).await;
    assert_eq!(emb.calls(), 1, "the vector size was asked once at start");
    verify_key(&app, &[]).await;
    Call::ask("alpha beta gamma delta").send(&app).await;
    settle(&app).await;
    let got = Call::ask("beta gamma delta alpha").send(&app).await;
    assert_eq!(
        got.cache(),
        "hit",
        "same words: the mock's vectors are equal"
    );
    assert!(got.header("cache-status").contains("semantic"));
    assert_eq!(
        Call::ask("something else entirely")
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    let last = emb.last();
    assert_eq!(last.path_and_query, "/v1/embeddings");
    assert_eq!(last.headers["authorization"], format!("Bearer {KEY}"));
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(up.calls(), 3);
    // The embedding key never reaches the upstream.
    let seen = up.seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|s| s.headers.get("authorization").is_none()));
    app.shutdown().await;
}

#[tokio::test]
async fn errors_and_timeouts_forward_the_request_uncached() {
    let (up, emb, status, delay, _dir, app) = setup(Some(64)).await;
    assert_eq!(emb.calls(), 0, "dimensions given: nothing asked at start");
    verify_key(&app, &[]).await;
    Call::ask("alpha beta gamma delta").send(&app).await;
    settle(&app).await;
    let before_errors = metric_sum(
        &metrics(&app).await,
        "modelcache_cache_errors_total",
        &["stage=\"embed\""],
    );

    // HTTP 500 from the endpoint: the paraphrase is forwarded, and answered.
    status.store(500, Ordering::SeqCst);
    let calls = up.calls();
    let got = Call::ask("beta gamma delta alpha").send(&app).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.cache(), "miss");
    assert_eq!(up.calls(), calls + 1);
    // An exact repeat needs no embedding and still hits.
    assert_eq!(
        Call::ask("alpha beta gamma delta").send(&app).await.cache(),
        "hit"
    );

    // A slow endpoint: cut at the 300 ms timeout, forwarded.
    status.store(200, Ordering::SeqCst);
    delay.store(2_000, Ordering::SeqCst);
    let t0 = Instant::now();
    let got = Call::ask("gamma alpha delta beta").send(&app).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.cache(), "miss");
    assert!(
        t0.elapsed() < Duration::from_millis(1_900),
        "{:?}",
        t0.elapsed()
    );
    let after_errors = metric_sum(
        &metrics(&app).await,
        "modelcache_cache_errors_total",
        &["stage=\"embed\""],
    );
    assert!(
        after_errors >= before_errors + 2.0,
        "{before_errors} -> {after_errors}"
    );

    // Back to normal: semantic hits again.
    delay.store(0, Ordering::SeqCst);
    settle(&app).await;
    let got = Call::ask("beta alpha gamma delta").send(&app).await;
    assert_eq!(got.cache(), "hit");
    app.shutdown().await;
}

#[tokio::test]
async fn a_dead_endpoint_never_fails_a_request() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of loopback.
    let toml = "[embedding]\nkind = \"openai\"\nurl = \"http://127.0.0.1:9/v1/embeddings\"\nmodel = \"m\"\ntimeout = \"300ms\"\ndimensions = 64\n";
    let mut s = settings_from(toml, dir.path(), &[]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).real_model().start().await;
    verify_key(&app, &[]).await;
    for _ in 0..3 {
        let got = Call::ask("is anyone there?").send(&app).await;
        assert_eq!(got.status, 200);
    }
    app.shutdown().await;
}

#[test]
fn the_config_names_what_a_remote_backend_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[embedding]\nkind = \"openai\"\napi_key_env = \"NOT_SET_ANYWHERE\"\n",
    )
    .unwrap();
    let out = check_config(&path, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in ["embedding.url", "embedding.model", "NOT_SET_ANYWHERE"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    std::fs::write(&path, "[embedding]\nkind = \"cloud\"\n").unwrap();
    let err = String::from_utf8_lossy(&check_config(&path, &[]).stderr).to_string();
    assert!(
        err.contains("embedding.kind") && err.contains("local, openai or e5"),
        "{err}"
    );
    std::fs::write(&path, "[embedding]\nurl = \"http://x\"\n").unwrap();
    let err = String::from_utf8_lossy(&check_config(&path, &[]).stderr).to_string();
    assert!(err.contains("only used with kind = \"openai\""), "{err}");
}
