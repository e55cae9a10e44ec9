//! The ModelCache wire API on the admin listener: ModelCache's README snippets
//! replayed with the real Python `requests` library against the real binary
//! on the shipped config; plain-JSON calls; every error code of the table; and
//! one cache shared with proxied traffic, scoped by tenant.

mod common;

use std::{process::Command, sync::Arc};

use common::*;
use modelcache::{app::AppOptions, embed::EmbedError};
use serde_json::{json, Value};

const TOKEN_A: &str = "sk-tenant-a-0123456789";
const TOKEN_B: &str = "sk-tenant-b-0123456789";

fn msgs(system: Option<&str>, user: &str) -> Value {
    match system {
        Some(s) => json!([{"role": "system", "content": s}, {"role": "user", "content": user}]),
        None => json!([{"role": "user", "content": user}]),
    }
}

fn insert(model: &str, items: &[(Value, &str)]) -> Value {
    json!({"type": "insert", "scope": {"model": model},
           "chat_info": items.iter().map(|(q, a)| json!({"query": q, "answer": a})).collect::<Vec<_>>()})
}

fn query(model: &str, q: Value) -> Value {
    json!({"type": "query", "scope": {"model": model}, "query": q})
}

/// Test settings whose keyless callers (loopback, the default) may also
/// write, as ModelCache's own clients expect:
/// `[admin] modelcache_writes_without_key = true`.
fn open_settings(upstream: &str, dir: &std::path::Path) -> modelcache::config::Settings {
    let mut s = settings(upstream, dir);
    s.admin.modelcache_writes_without_key = true;
    s
}

/// [`start`] with [`open_settings`].
async fn start_open() -> (Mock, tempfile::TempDir, modelcache::app::RunningApp) {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(open_settings(&up.url(), dir.path()))
        .start()
        .await;
    (up, dir, app)
}

async fn call(app: &modelcache::app::RunningApp, body: Value) -> Value {
    let got = modelcache_call(app, body, &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("content-type"), "application/json");
    got.json()
}

#[tokio::test]
async fn readme_snippets_work_unchanged_on_the_shipped_config() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("MODELCACHE_UPSTREAM_URL", up.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // NOTE: the shipped config, with the one opt-in the README's insert and
    // remove need: by default a caller without a key may only query.
    let shipped = std::fs::read_to_string(repo_root().join("config.toml")).unwrap();
    let opt_in = shipped.replace(
        "modelcache_writes_without_key = false",
        "modelcache_writes_without_key = true",
    );
    assert_ne!(opt_in, shipped, "the shipped config names the opt-in");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, opt_in).unwrap();
    let run = Binary::serve(&config, dir.path()).envs(&env).start().await;
    let admin = run.admin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(repo_root().join("tests/python/modelcache_readme.py"))
            .arg(admin)
            .output()
    })
    .await
    .unwrap()
    .expect("run `make test`, which creates .venv with requests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 4, "{calls:?}");
    for c in &calls {
        assert_eq!(c["status"], 200, "{c}");
        assert_eq!(c["content_type"], "application/json", "{c}");
        assert_eq!(c["body"]["errorCode"], 0, "{c}");
        assert_eq!(c["body"]["errorDesc"], "", "{c}");
    }
    assert_eq!(
        calls[0]["body"],
        json!({"errorCode": 0, "errorDesc": "", "writeStatus": "success"})
    );
    let hit = &calls[1]["body"];
    assert_eq!(hit["cacheHit"], true, "{hit}");
    assert_eq!(
        hit["answer"],
        "こんにちは、私はインテリジェントアシスタントです。どのようにお手伝いできますか？"
    );
    assert_eq!(
        hit["hit_query"],
        "system###あなたはAIコードアシスタントであり、ユーザーがコード関連の問題を解決するのを助けるために中立で無害な回答を提供する必要があります。|||user###あなたは誰ですか?"
    );
    let delta = hit["delta_time"].as_str().unwrap();
    assert!(delta.ends_with('s') && delta.trim_end_matches('s').parse::<f64>().is_ok());
    assert_eq!(
        calls[2]["body"],
        json!({"errorCode": 0, "errorDesc": "", "response": {"status": "success", "delete_count": 1}, "writeStatus": "success"})
    );
    assert_eq!(calls[3]["body"]["cacheHit"], false);
    assert_eq!(calls[3]["body"]["hit_query"], "");
    assert_eq!(calls[3]["body"]["answer"], "");
    assert_eq!(up.calls(), 0, "the ModelCache API never calls the upstream");
    let log = run.stop().await;
    assert!(
        log.contains("modelcache insert") && log.contains("no tenant key, from 127.0.0.1"),
        "mutations are logged with who made them:\n{log}"
    );
}

#[tokio::test]
async fn plain_json_welcome_register_and_the_json_string_encoding() {
    let (_up, _dir, app) = start_open().await;
    let got = Call::get("/welcome").send(app.admin_addr).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello, modelcache!");

    let reg = json!({"type": "register", "scope": {"model": "gpt-4.1"}});
    assert_eq!(
        call(&app, reg.clone()).await,
        json!({"errorCode": 0, "errorDesc": "", "response": "create_success", "writeStatus": "success"})
    );
    assert_eq!(call(&app, reg).await["response"], "already_exists");

    // The same request in both encodings: a JSON object, and a JSON string
    // holding it (what `requests.post(json=json.dumps(data))` sends).
    let ins = insert(
        "gpt-4.1",
        &[(
            msgs(None, "What is a monad?"),
            "A monoid in the category of endofunctors.",
        )],
    );
    assert_eq!(call(&app, ins).await["writeStatus"], "success");
    let q = query("gpt-4.1", msgs(None, "What is a monad?"));
    let as_string = Value::String(q.to_string());
    for body in [q, as_string] {
        let v = call(&app, body).await;
        assert_eq!(v["cacheHit"], true, "{v}");
        assert_eq!(v["answer"], "A monoid in the category of endofunctors.");
        assert_eq!(v["hit_query"], "user###What is a monad?");
    }
    // Model names are kept exact: gpt-4.1 is not gpt_4_1.
    let v = call(&app, query("gpt_4_1", msgs(None, "What is a monad?"))).await;
    assert_eq!(v["cacheHit"], false);
    app.shutdown().await;
}

#[tokio::test]
async fn entries_are_shared_with_proxied_traffic_both_ways() {
    let (up, _dir, app) = start_open().await;
    // Hits go only to keys the upstream has accepted: one request proves it.
    verify_key(&app, &[]).await;
    let question = "Which HTTP status means Too Many Requests?";
    let ins = insert(
        "gpt-test",
        &[(msgs(None, question), "429 Too Many Requests.")],
    );
    assert_eq!(call(&app, ins).await["writeStatus"], "success");

    // A chat completion for the same model and messages hits the inserted entry.
    let got = Call::ask(question).send(&app).await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(content_of(&got), "429 Too Many Requests.");
    assert_eq!(got.json()["object"], "chat.completion");
    assert_eq!(up.calls(), 1, "only the key check");
    // ... streamed as well.
    let mut streamed = ask(question);
    streamed["stream"] = json!(true);
    let got = Call::chat(streamed).send(&app).await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(content_of(&got), "429 Too Many Requests.");
    assert!(got.text().trim_end().ends_with("data: [DONE]"));
    // A paraphrase hits it through the semantic layer.
    let got = Call::ask("Which HTTP status means Too Many Requests")
        .send(&app)
        .await;
    assert_eq!(got.cache(), "hit");
    // Answer-shaping parameters are another partition (api_entries_match =
    // "default_params", the default): forwarded.
    let mut hot = ask(question);
    hot["temperature"] = json!(0.2);
    let got = Call::chat(hot).send(&app).await;
    assert_eq!(got.cache(), "miss");
    assert_eq!(up.calls(), 2);

    // The reverse: an answer cached from proxied traffic is found by a query.
    let asked = "Explain the borrow checker briefly.";
    Call::ask(asked).send(&app).await;
    settle(&app).await;
    let v = call(&app, query("gpt-test", msgs(None, asked))).await;
    assert_eq!(v["cacheHit"], true, "{v}");
    assert_eq!(v["answer"], answer_for(asked, 3));
    assert_eq!(v["hit_query"], format!("user###{asked}"));
    app.shutdown().await;
}

#[tokio::test]
async fn any_sampling_params_lets_inserted_entries_answer_sampled_requests() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_settings(&up.url(), dir.path());
    policy(&mut s, |p| {
        p.api_entries_match = modelcache::config::ApiEntriesMatch::AnySamplingParams
    });
    let app = Gateway::new(s).start().await;
    verify_key(&app, &[]).await;
    let question = "What port does HTTPS use?";
    let ins = insert("gpt-test", &[(msgs(None, question), "443.")]);
    assert_eq!(call(&app, ins).await["writeStatus"], "success");
    let mut sampled = ask(question);
    sampled["temperature"] = json!(0.7);
    sampled["top_p"] = json!(0.9);
    sampled["seed"] = json!(7);
    let got = Call::chat(sampled.clone()).send(&app).await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(content_of(&got), "443.");
    assert_eq!(up.calls(), 1, "only the key check");
    // A parameter that shapes the answer still partitions.
    let mut shaped = sampled.clone();
    shaped["response_format"] = json!({"type": "json_object"});
    assert_eq!(Call::chat(shaped).send(&app).await.cache(), "miss");
    assert_eq!(up.calls(), 2);
    // Only inserted entries: an answer cached from a default-parameter
    // request does not answer a sampled one.
    let other = "What port does SSH use?";
    Call::ask(other).send(&app).await;
    settle(&app).await;
    assert_eq!(Call::ask(other).send(&app).await.cache(), "hit");
    let mut sampled_other = ask(other);
    sampled_other["temperature"] = json!(0.7);
    assert_eq!(Call::chat(sampled_other).send(&app).await.cache(), "miss");
    assert_eq!(up.calls(), 4);
    app.shutdown().await;
}

#[tokio::test]
async fn bulk_inserts_are_embedded_in_batches() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    // NOTE: an embedder that takes a real model's time (10 ms a batch), so
    // that what queues while one batch runs is what the next one takes; the
    // hashing embedder alone is so fast that batch sizes would be a race.
    let slow: modelcache::embed::EmbedderFactory = Arc::new(|| {
        Ok(Box::new(Slow(modelcache::embed::HashEmbedder::new(1024)))
            as Box<dyn modelcache::embed::Embedder>)
    });
    let app = Gateway::new(open_settings(&up.url(), dir.path()))
        .embedder(slow)
        .start()
        .await;
    let items: Vec<(Value, String)> = (0..200)
        .map(|i| {
            (
                msgs(
                    Some("You are terse."),
                    &format!("bulk question number {i} about topic {}", i * 7),
                ),
                format!("answer {i}"),
            )
        })
        .collect();
    let refs: Vec<(Value, &str)> = items.iter().map(|(q, a)| (q.clone(), a.as_str())).collect();
    let before = metrics(&app).await;
    assert_eq!(
        call(&app, insert("gpt-test", &refs)).await["writeStatus"],
        "success"
    );
    let after = metrics(&app).await;
    let count = |m: &str| metric_sum(m, "modelcache_embedding_batch_size_count", &[]);
    let sum = |m: &str| metric_sum(m, "modelcache_embedding_batch_size_sum", &[]);
    let batches = count(&after) - count(&before);
    let texts = sum(&after) - sum(&before);
    assert_eq!(texts, 200.0, "every question embedded once");
    // Queued back to back in chunks of embedding.max_batch (32): about 7.
    assert!(
        batches <= 20.0,
        "200 texts in {batches} batches: not batched"
    );
    for i in [0, 99, 199] {
        let q = msgs(
            Some("You are terse."),
            &format!("bulk question number {i} about topic {}", i * 7),
        );
        let v = call(&app, query("gpt-test", q)).await;
        assert_eq!(v["answer"], format!("answer {i}"), "{v}");
    }
    let e = admin_entries(&app, "gpt-test").await;
    assert_eq!(e.len(), 200);
    assert!(e.iter().all(|e| e["origin"] == "api"));
    app.shutdown().await;
}

/// The hashing embedder, 10 ms a batch.
struct Slow(modelcache::embed::HashEmbedder);

impl modelcache::embed::Embedder for Slow {
    fn dims(&self) -> usize {
        self.0.dims()
    }
    fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        std::thread::sleep(std::time::Duration::from_millis(10));
        self.0.embed_batch(texts)
    }
}

async fn admin_entries(app: &modelcache::app::RunningApp, model: &str) -> Vec<Value> {
    let got = admin(
        app,
        "GET",
        &format!("/admin/entries?model={model}&limit=500"),
        Value::Null,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.json()["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn removes_by_id_and_by_model_take_effect_everywhere() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(open_settings(&up.url(), dir.path()))
        .start()
        .await;
    verify_key(&app, &[]).await;
    let ins = insert(
        "model-a",
        &[
            (msgs(None, "first question about caching"), "first"),
            (msgs(None, "second question about indexes"), "second"),
        ],
    );
    call(&app, ins).await;
    call(
        &app,
        insert(
            "model-b",
            &[(msgs(None, "first question about caching"), "b-first")],
        ),
    )
    .await;
    let a = admin_entries(&app, "model-a").await;
    let first = a.iter().find(|e| e["answer_preview"] == "first").unwrap()["id"]
        .as_i64()
        .unwrap();
    let b_id = admin_entries(&app, "model-b").await[0]["id"]
        .as_i64()
        .unwrap();

    // Ids of another model are not this scope's to delete.
    let del = json!({"type": "remove", "scope": {"model": "model-a"}, "remove_type": "delete_by_id", "id_list": [first, b_id, 999_999]});
    let v = call(&app, del).await;
    assert_eq!(
        v["response"],
        json!({"status": "success", "delete_count": 1})
    );
    let v = call(
        &app,
        query("model-a", msgs(None, "first question about caching")),
    )
    .await;
    assert_eq!(
        v["cacheHit"], false,
        "deleted: gone from the exact and semantic layers"
    );
    let got = Call::chat(
        json!({"model": "model-a", "messages": msgs(None, "first question about caching")}),
    )
    .send(&app)
    .await;
    assert_eq!(got.cache(), "miss");
    assert_eq!(up.calls(), 2, "the key check, then the deleted question");
    // The entry that was not deleted still hits through the proxy.
    let got = Call::chat(
        json!({"model": "model-a", "messages": msgs(None, "second question about indexes")}),
    )
    .send(&app)
    .await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(
        call(
            &app,
            query("model-b", msgs(None, "first question about caching"))
        )
        .await["answer"],
        "b-first"
    );
    // Ids as strings are accepted too.
    settle(&app).await;
    let v = call(&app, json!({"type": "remove", "scope": {"model": "model-b"}, "remove_type": "delete_by_id", "id_list": [b_id.to_string()]})).await;
    assert_eq!(v["response"]["delete_count"], 1);

    let v = call(&app, json!({"type": "remove", "scope": {"model": "model-a"}, "remove_type": "truncate_by_model"})).await;
    assert_eq!(
        v["response"]["delete_count"], 2,
        "the second insert and the proxied answer"
    );
    assert!(admin_entries(&app, "model-a").await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn the_caller_key_picks_the_tenant_and_tenants_never_share() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[auth]
unknown_keys = "reject"
[admin]
modelcache_without_key = "never"
[[tenants]]
name = "alpha"
keys_env = ["KEY_A"]
[[tenants]]
name = "beta"
keys_env = ["KEY_B"]
"#;
    let mut s = settings_from(toml, dir.path(), &[("KEY_A", TOKEN_A), ("KEY_B", TOKEN_B)]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).start().await;
    let a = format!("Bearer {TOKEN_A}");
    let b = format!("Bearer {TOKEN_B}");
    let q = msgs(None, "What is our refund policy?");
    let got = modelcache_call(
        &app,
        insert("gpt-test", &[(q.clone(), "alpha's policy")]),
        &[("authorization", &a)],
    )
    .await;
    assert_eq!(got.json()["writeStatus"], "success");
    let got = modelcache_call(&app, query("gpt-test", q.clone()), &[("authorization", &b)]).await;
    assert_eq!(
        got.json()["cacheHit"],
        false,
        "beta never sees alpha's entry"
    );
    let got = modelcache_call(&app, query("gpt-test", q.clone()), &[("authorization", &a)]).await;
    assert_eq!(got.json()["answer"], "alpha's policy");
    // beta cannot delete alpha's entry by id, nor truncate it.
    let id = admin_entries(&app, "gpt-test").await[0]["id"]
        .as_i64()
        .unwrap();
    let del = json!({"type": "remove", "scope": {"model": "gpt-test"}, "remove_type": "delete_by_id", "id_list": [id]});
    let got = modelcache_call(&app, del, &[("authorization", &b)]).await;
    assert_eq!(got.json()["response"]["delete_count"], 0);
    let trunc = json!({"type": "remove", "scope": {"model": "gpt-test"}, "remove_type": "truncate_by_model"});
    let got = modelcache_call(&app, trunc, &[("authorization", &b)]).await;
    assert_eq!(got.json()["response"]["delete_count"], 0);
    let got = modelcache_call(&app, query("gpt-test", q.clone()), &[("authorization", &a)]).await;
    assert_eq!(got.json()["cacheHit"], true);
    // The admin token may address a tenant by name.
    let admin_auth = format!("Bearer {ADMIN_TOKEN}");
    let got = modelcache_call(
        &app,
        query("gpt-test", q.clone()),
        &[
            ("authorization", &admin_auth),
            ("x-modelcache-tenant", "alpha"),
        ],
    )
    .await;
    assert_eq!(got.json()["answer"], "alpha's policy");
    // Without a key (admin.modelcache_without_key = "never") or with a
    // stranger's: 401, in the query shape.
    for h in [vec![], vec![("authorization", "Bearer sk-stranger")]] {
        let got = modelcache_call(&app, query("gpt-test", q.clone()), &h).await;
        assert_eq!(got.status, 401);
        assert_eq!(got.json()["errorCode"], 100);
        assert_eq!(got.json()["cacheHit"], false);
    }
    assert_eq!(up.calls(), 0);
    app.shutdown().await;
}

/// An embedder that cannot load: the cache never becomes available.
fn broken_embedder() -> modelcache::embed::EmbedderFactory {
    Arc::new(|| Err(EmbedError::Load("no model here (test)".into())))
}

fn code(v: &Value) -> i64 {
    v["errorCode"].as_i64().unwrap_or(-1)
}

#[tokio::test]
async fn every_error_code_has_a_request_that_triggers_it() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[admin]
modelcache_writes_without_key = true
[[tenants]]
name = "main"
[[tenants]]
name = "quiet"
match_models = ["quiet-*"]
[tenants.cache]
mode = "off"
"#;
    let mut s = settings_from(toml, dir.path(), &[]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    s.server.max_body_bytes = 64 * 1024;
    let store = Arc::new(FaultyStore::default());
    let app = Gateway::new(s).store(store.clone()).start().await;
    let raw = |body: &'static str| {
        Call::new("POST", "/modelcache")
            .header("content-type", "application/json")
            .body(body)
            .send(app.admin_addr)
    };

    // 101: not JSON at all (HTTP 400), a JSON string that holds no JSON, not an object.
    let got = raw("{type: query").await;
    assert_eq!(got.status, 400);
    assert_eq!(code(&got.json()), 101);
    assert_eq!(got.json()["cacheHit"], false, "query shape");
    assert!(got.json()["errorDesc"]
        .as_str()
        .unwrap()
        .contains("not JSON"));
    let got = raw(r#""{type: query""#).await;
    assert_eq!((got.status, code(&got.json())), (200, 101));
    let got = raw("[1, 2]").await;
    assert_eq!((got.status, code(&got.json())), (200, 101));
    // 101 too for a body over max_body_bytes (HTTP 413).
    let big = json!({"type": "insert", "scope": {"model": "m"}, "chat_info": [{"query": msgs(None, &"x".repeat(70 * 1024)), "answer": "a"}]});
    let got = modelcache_call(&app, big, &[]).await;
    assert_eq!((got.status, code(&got.json())), (413, 101));

    // 102: type missing or unknown; the description lists the valid types.
    for body in [
        json!({"scope": {"model": "m"}}),
        json!({"type": "upsert", "scope": {"model": "m"}}),
    ] {
        let v = call(&app, body).await;
        assert_eq!(code(&v), 102, "{v}");
        assert!(v["errorDesc"]
            .as_str()
            .unwrap()
            .contains("query, insert, remove, register"));
        assert_eq!(v["hit_query"], "", "query shape");
    }
    // 103: a parameter missing or malformed.
    for body in [
        json!({"type": "query", "query": msgs(None, "q")}),
        json!({"type": "query", "scope": {}, "query": msgs(None, "q")}),
        json!({"type": "query", "scope": {"model": "m"}, "query": "not a list"}),
        json!({"type": "query", "scope": {"model": "m"}, "query": [{"content": "no role"}]}),
        json!({"type": "insert", "scope": {"model": "m"}, "chat_info": []}),
        json!({"type": "insert", "scope": {"model": "m"}, "chat_info": [{"query": msgs(None, "q")}]}),
        json!({"type": "remove", "scope": {"model": "m"}}),
        json!({"type": "remove", "scope": {"model": "m"}, "remove_type": "delete_by_id", "id_list": ["x"]}),
        json!({"type": "remove", "scope": {"model": "m"}, "remove_type": "delete_by_id"}),
    ] {
        let v = call(&app, body.clone()).await;
        assert_eq!(code(&v), 103, "{body} -> {v}");
        assert!(!v["errorDesc"].as_str().unwrap().is_empty());
    }
    // 401: unknown remove_type.
    let v = call(
        &app,
        json!({"type": "remove", "scope": {"model": "m"}, "remove_type": "drop_everything"}),
    )
    .await;
    assert_eq!(code(&v), 401);
    assert_eq!(v["removeStatus"], "exception");
    assert!(v.get("response").is_some());
    // 202: the lookup cannot run for this tenant (its cache is off).
    let v = call(&app, query("quiet-1", msgs(None, "q"))).await;
    assert_eq!(code(&v), 202, "{v}");
    assert!(v["errorDesc"].as_str().unwrap().contains("quiet"));
    // 301: the insert is refused for this tenant (its cache is off).
    let v = call(&app, insert("quiet-1", &[(msgs(None, "q"), "a")])).await;
    assert_eq!(
        (code(&v), v["writeStatus"].as_str()),
        (301, Some("exception")),
        "{v}"
    );

    // The store fails (a broken disk): 302, 402, 502; nothing is served.
    store.fail_writes(true);
    let v = call(&app, insert("m", &[(msgs(None, "q"), "a")])).await;
    assert_eq!(
        (code(&v), v["writeStatus"].as_str()),
        (302, Some("exception")),
        "{v}"
    );
    let v = call(
        &app,
        json!({"type": "remove", "scope": {"model": "m"}, "remove_type": "truncate_by_model"}),
    )
    .await;
    assert_eq!(
        (code(&v), v["writeStatus"].as_str()),
        (402, Some("exception")),
        "{v}"
    );
    assert!(v.get("response").is_some());
    let v = call(&app, json!({"type": "register", "scope": {"model": "m"}})).await;
    assert_eq!(
        (code(&v), v["writeStatus"].as_str()),
        (502, Some("exception")),
        "{v}"
    );
    assert_eq!(
        call(&app, query("m", msgs(None, "q"))).await["cacheHit"],
        false
    );
    store.fail_writes(false);
    assert_eq!(
        call(&app, insert("m", &[(msgs(None, "q"), "a")])).await["writeStatus"],
        "success"
    );
    app.shutdown().await;

    // 201: the cache is not available at all (its model failed to load).
    let dir = tempfile::tempdir().unwrap();
    let s = open_settings(&up.url(), dir.path());
    let app = modelcache::app::start(
        s,
        AppOptions {
            embedder: Some(broken_embedder()),
            store: None,
        },
    )
    .await
    .unwrap();
    assert!(app
        .wait_ready(std::time::Duration::from_secs(10))
        .await
        .is_err());
    let v = call(&app, query("m", msgs(None, "q"))).await;
    assert_eq!(code(&v), 201, "{v}");
    assert!(v["errorDesc"].as_str().unwrap().contains("not available"));
    let v = call(&app, insert("m", &[(msgs(None, "q"), "a")])).await;
    assert_eq!(code(&v), 301);
    // The proxy still forwards.
    assert_eq!(Call::ask("still served?").send(&app).await.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn keyless_writes_are_refused_by_default_and_nothing_is_served_from_them() {
    // The defaults (the shipped config): keyless callers on loopback may query.
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    verify_key(&app, &[]).await;
    let question = "What is the default port of PostgreSQL?";
    let poison = insert("gpt-test", &[(msgs(None, question), "Port 80, always.")]);
    for body in [
        poison.clone(),
        json!({"type": "remove", "scope": {"model": "gpt-test"}, "remove_type": "truncate_by_model"}),
        json!({"type": "register", "scope": {"model": "gpt-test"}}),
    ] {
        // Both encodings, as ModelCache's clients send them.
        for body in [body.clone(), Value::String(body.to_string())] {
            let got = modelcache_call(&app, body.clone(), &[]).await;
            assert_eq!(got.status, 401, "{body}: {}", got.text());
            let v = got.json();
            assert_eq!(code(&v), 100, "{v}");
            assert_eq!(v["writeStatus"], "exception");
            assert!(
                v["errorDesc"]
                    .as_str()
                    .unwrap()
                    .contains("modelcache_writes_without_key = true"),
                "the refusal says what to configure: {v}"
            );
        }
    }
    // Nothing was stored: the proxy forwards the question, and the answer
    // is the upstream's.
    let got = Call::ask(question).send(&app).await;
    assert_eq!(got.cache(), "miss");
    assert_eq!(content_of(&got), answer_for(question, 2));
    assert_eq!(up.calls(), 2);
    // Reads still work without a key.
    settle(&app).await;
    let v = call(&app, query("gpt-test", msgs(None, question))).await;
    assert_eq!(v["cacheHit"], true, "{v}");
    assert_eq!(v["answer"], answer_for(question, 2));
    // The admin token (or a tenant key) may write.
    let admin_auth = format!("Bearer {ADMIN_TOKEN}");
    let other = "What is the default port of Redis?";
    let got = modelcache_call(
        &app,
        insert("gpt-test", &[(msgs(None, other), "6379.")]),
        &[("authorization", &admin_auth)],
    )
    .await;
    assert_eq!(got.json()["writeStatus"], "success", "{}", got.text());
    assert_eq!(content_of(&Call::ask(other).send(&app).await), "6379.");
    assert_eq!(up.calls(), 2);
    app.shutdown().await;

    // With [admin] modelcache_writes_without_key = true, a keyless insert
    // works, and the proxy serves it.
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(open_settings(&up.url(), dir.path()))
        .start()
        .await;
    verify_key(&app, &[]).await;
    assert_eq!(call(&app, poison).await["writeStatus"], "success");
    let got = Call::ask(question).send(&app).await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(content_of(&got), "Port 80, always.");
    assert_eq!(up.calls(), 1, "only the key check");
    app.shutdown().await;
}
