//! The admin API: the token, tenants with their figures, the entry browser,
//! deletes and flushes that reach every layer and survive a restart, the hit
//! log, the dry-run lookup that writes nothing, and the audit log.

mod common;

use common::*;
use serde_json::{json, Value};

fn msgs(user: &str) -> Value {
    json!([{"role": "user", "content": user}])
}

fn ask_model(model: &str, q: &str) -> Value {
    json!({"model": model, "messages": msgs(q)})
}

async fn insert(app: &modelcache::app::RunningApp, model: &str, pairs: &[(&str, &str)]) {
    let body = json!({"type": "insert", "scope": {"model": model},
        "chat_info": pairs.iter().map(|(q, a)| json!({"query": msgs(q), "answer": a})).collect::<Vec<_>>()});
    // NOTE: a keyless caller may only query (admin.modelcache_writes_without_key).
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let got = modelcache_call(app, body, &[("authorization", &auth)]).await;
    assert_eq!(got.json()["writeStatus"], "success", "{}", got.text());
}

async fn get(app: &modelcache::app::RunningApp, path: &str) -> Value {
    let got = admin(app, "GET", path, Value::Null).await;
    assert_eq!(got.status, 200, "{path}: {}", got.text());
    assert_eq!(got.header("content-type"), "application/json");
    got.json()
}

async fn lookup(app: &modelcache::app::RunningApp, body: Value) -> Value {
    let got = admin(app, "POST", "/admin/lookup", body).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.json()
}

#[tokio::test]
async fn admin_routes_need_the_token() {
    let (_up, _dir, app) = Gateway::with_mock_llm().await;
    for (auth, status) in [
        (None, 401),
        (Some("Bearer wrong-token-0123456789"), 401),
        (Some(format!("Bearer {ADMIN_TOKEN}").leak() as &str), 200),
    ] {
        let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let got = Call::get("/admin/tenants")
            .headers(&h)
            .send(app.admin_addr)
            .await;
        assert_eq!(got.status, status, "{auth:?}: {}", got.text());
        if status == 401 {
            assert_eq!(got.json()["error"]["code"], "invalid_admin_token");
            assert!(got.header("www-authenticate").starts_with("Bearer"));
        }
    }
    // Unknown routes and methods.
    assert_eq!(
        admin(&app, "GET", "/admin/nothing", Value::Null)
            .await
            .status,
        404
    );
    assert_eq!(
        admin(&app, "PUT", "/admin/tenants", Value::Null)
            .await
            .status,
        405
    );
    assert_eq!(
        admin(&app, "GET", "/admin/entries/abc", Value::Null)
            .await
            .status,
        400
    );
    assert_eq!(
        admin(&app, "GET", "/admin/entries?limit=0", Value::Null)
            .await
            .status,
        400
    );
    // The console page needs no token (it asks for one) and loads nothing else.
    let page = Call::get("/ui").send(app.admin_addr).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page
        .header("content-security-policy")
        .contains("default-src 'none'"));
    assert!(page.text().contains("<html"));
    assert!(!page.text().contains(ADMIN_TOKEN));
    app.shutdown().await;

    // No token configured: closed, and the answer names the variable.
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&up.url(), dir.path());
    s.admin.token = None;
    let app = Gateway::new(s.clone()).start().await;
    let got = admin(&app, "GET", "/admin/tenants", Value::Null).await;
    assert_eq!(got.status, 403);
    assert!(got.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("MODELCACHE_ADMIN_TOKEN"));
    app.shutdown().await;
    // ... unless loopback callers are trusted by configuration: to read.
    s.admin.loopback_without_token = true;
    let app = Gateway::new(s.clone()).start().await;
    let got = Call::get("/admin/tenants").send(app.admin_addr).await;
    assert_eq!(got.status, 200);
    let dry = json!({"model": "gpt-test", "messages": msgs("q")}).to_string();
    let got = Call::new("POST", "/admin/lookup")
        .body(dry)
        .send(app.admin_addr)
        .await;
    assert_eq!(got.status, 200, "a dry run only reads: {}", got.text());
    // Writing routes still need the token.
    let writes = [
        ("DELETE", "/admin/entries/1", String::new()),
        (
            "POST",
            "/admin/flush",
            json!({"tenant": "default"}).to_string(),
        ),
        (
            "POST",
            "/admin/feedback",
            json!({"entry_id": 1, "request_id": "mc-0", "correct": false}).to_string(),
        ),
    ];
    for (method, path, body) in &writes {
        let got = Call::new(method, path)
            .body(body.clone())
            .send(app.admin_addr)
            .await;
        assert_eq!(got.status, 403, "{method} {path}: {}", got.text());
        assert_eq!(got.json()["error"]["code"], "admin_token_required");
        assert!(got.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loopback_writes_without_token = true"));
    }
    app.shutdown().await;
    // ... and to write only with a second opt-in.
    s.admin.loopback_writes_without_token = true;
    let app = Gateway::new(s).start().await;
    for (method, path, body) in &writes {
        let got = Call::new(method, path)
            .body(body.clone())
            .send(app.admin_addr)
            .await;
        assert_ne!(got.status, 403, "{method} {path}: {}", got.text());
        assert_ne!(got.status, 401, "{method} {path}: {}", got.text());
    }
    app.shutdown().await;
}

#[tokio::test]
async fn tenants_show_entries_hit_rate_and_tokens_saved() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[tenants]]
name = "search"
match_header = { name = "x-team", value = "search" }
[[tenants]]
name = "web"
"#;
    let mut s = settings_from(toml, dir.path(), &[]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).start().await;
    let search = [("x-team", "search")];
    verify_key(&app, &search).await;
    Call::ask("What is BM25?").headers(&search).send(&app).await;
    settle(&app).await;
    for _ in 0..3 {
        assert_eq!(
            Call::ask("What is BM25?")
                .headers(&search)
                .send(&app)
                .await
                .cache(),
            "hit"
        );
    }
    settle(&app).await;
    let v = get(&app, "/admin/tenants").await;
    let t = |name: &str| {
        v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
            .clone()
    };
    let s = t("search");
    assert_eq!(s["configured"], true);
    assert_eq!(s["entries"], 2, "the warm-up and the question");
    assert_eq!(s["stored_hits"], 3);
    assert_eq!(s["since_start"]["hits"], 3);
    assert_eq!(s["since_start"]["misses"], 2);
    assert_eq!(s["since_start"]["hit_rate"], 0.6);
    assert_eq!(s["since_start"]["saved_tokens"]["total"], 3 * 18);
    assert_eq!(s["policy"]["mode"], "read_write");
    let w = t("web");
    assert_eq!(w["entries"], 0);
    assert_eq!(w["since_start"]["hit_rate"], Value::Null);
    app.shutdown().await;
}

#[tokio::test]
async fn the_entry_browser_lists_searches_pages_and_details() {
    let (_up, _dir, app) = Gateway::with_mock_llm().await;
    insert(
        &app,
        "m1",
        &[
            ("How do I sort a list?", "sorted(xs)"),
            ("How do I reverse a list?", "xs[::-1]"),
            ("What is a tuple?", "An immutable sequence."),
        ],
    )
    .await;
    insert(
        &app,
        "m2",
        &[
            ("How do I sort a dict?", "sorted(d.items())"),
            ("What is a set?", "An unordered collection."),
        ],
    )
    .await;
    // Pages of two, newest first, until next_cursor is null.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let v = get(&app, &format!("/admin/entries?limit=2{cursor}")).await;
        let page = v["entries"].as_array().unwrap();
        seen.extend(page.iter().map(|e| e["id"].as_i64().unwrap()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted, "five distinct ids, newest first");
    assert_eq!(seen.len(), 5);
    // Filters: model, text (case-insensitive), tenant.
    let ids = |v: Value| {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["question"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(get(&app, "/admin/entries?model=m2").await).len(), 2);
    assert_eq!(
        ids(get(&app, "/admin/entries?q=SORT").await),
        vec![
            "user###How do I sort a dict?",
            "user###How do I sort a list?"
        ]
    );
    assert_eq!(
        ids(get(&app, "/admin/entries?q=sort&model=m1").await),
        vec!["user###How do I sort a list?"]
    );
    assert_eq!(
        ids(get(&app, "/admin/entries?tenant=default").await).len(),
        5
    );
    assert!(ids(get(&app, "/admin/entries?tenant=nobody").await).is_empty());
    // One entry in full.
    let list = get(&app, "/admin/entries?q=tuple").await;
    let id = list["entries"][0]["id"].as_i64().unwrap();
    let e = get(&app, &format!("/admin/entries/{id}")).await;
    assert_eq!(e["question"], "user###What is a tuple?");
    assert_eq!(e["answer"], "An immutable sequence.");
    assert_eq!(e["model"], "m1");
    assert_eq!(e["tenant"], "default");
    assert_eq!(e["origin"], "api");
    assert_eq!(e["params"], json!({"model": "m1"}));
    assert_eq!(e["answer_json"]["object"], "chat.completion");
    assert_eq!(e["hits"], 0);
    assert_eq!(e["last_hit_at"], Value::Null);
    let ttl = e["expires_at"].as_i64().unwrap() - e["created_at"].as_i64().unwrap();
    assert_eq!(ttl, 7 * 24 * 3600 * 1000);
    let got = admin(&app, "GET", "/admin/entries/999999", Value::Null).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["error"]["code"], "entry_not_found");
    app.shutdown().await;
}

#[tokio::test]
async fn a_deleted_entry_never_hits_again_including_after_a_restart() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    verify_key(&app, &[]).await;
    let q = "Name three prime numbers";
    Call::ask(q).send(&app).await;
    Call::ask("Name three noble gases").send(&app).await;
    settle(&app).await;
    let hit = Call::ask(q).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    let id: i64 = hit.header("x-modelcache-entry").parse().unwrap();
    let calls = up.calls();

    let got = admin(&app, "DELETE", &format!("/admin/entries/{id}"), Value::Null).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["deleted"], 1);
    assert_eq!(
        admin(&app, "GET", &format!("/admin/entries/{id}"), Value::Null)
            .await
            .status,
        404
    );
    assert_eq!(
        admin(&app, "DELETE", &format!("/admin/entries/{id}"), Value::Null)
            .await
            .status,
        404
    );
    // Not in the exact layer, not in the semantic layer (same words, other order).
    for probe in [q, "three prime numbers name"] {
        let v = lookup(&app, json!({"model": "gpt-test", "messages": msgs(probe)})).await;
        assert_eq!(v["verdict"], "miss", "{v}");
        assert!(
            v["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["entry_id"] != id),
            "{v}"
        );
    }
    app.shutdown().await;

    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    verify_key(&app, &[]).await;
    let v = lookup(&app, json!({"model": "gpt-test", "messages": msgs(q)})).await;
    assert_eq!(v["verdict"], "miss", "after a restart: {v}");
    let got = Call::ask(q).send(&app).await;
    assert_eq!(got.cache(), "miss");
    // NOTE: the key stays verified across the restart (the store keeps it),
    // so its warm-up question is a hit: only the deleted question goes up.
    assert_eq!(up.calls(), calls + 1, "the deleted question");
    // The other entry survived.
    assert_eq!(
        Call::ask("Name three noble gases").send(&app).await.cache(),
        "hit"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_flush_names_one_tenant_and_optionally_one_model() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[tenants]]
name = "alpha"
match_header = { name = "x-team", value = "alpha" }
[[tenants]]
name = "beta"
"#;
    let mut s = settings_from(toml, dir.path(), &[]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).start().await;
    let alpha = [("x-team", "alpha")];
    verify_key(&app, &alpha).await;
    verify_key(&app, &[]).await;
    for (m, q) in [("m1", "first"), ("m1", "second"), ("m2", "third")] {
        Call::chat(ask_model(m, q)).headers(&alpha).send(&app).await;
        Call::chat(ask_model(m, q)).send(&app).await;
    }
    settle(&app).await;
    for body in [json!({}), json!({"tenant": ""}), json!({"model": "m1"})] {
        let got = admin(&app, "POST", "/admin/flush", body).await;
        assert_eq!(got.status, 400);
        assert_eq!(got.json()["error"]["code"], "tenant_required");
    }
    let got = admin(&app, "POST", "/admin/flush", json!({"tenant": "gamma"})).await;
    assert_eq!(got.status, 404);
    let got = admin(
        &app,
        "POST",
        "/admin/flush",
        json!({"tenant": "alpha", "model": "m1"}),
    )
    .await;
    assert_eq!(
        got.json(),
        json!({"tenant": "alpha", "model": "m1", "deleted": 2})
    );
    assert_eq!(
        Call::chat(ask_model("m1", "first"))
            .headers(&alpha)
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    assert_eq!(
        Call::chat(ask_model("m2", "third"))
            .headers(&alpha)
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    assert_eq!(
        Call::chat(ask_model("m1", "first"))
            .send(&app)
            .await
            .cache(),
        "hit",
        "beta keeps everything"
    );
    settle(&app).await;
    let got = admin(&app, "POST", "/admin/flush", json!({"tenant": "alpha"})).await;
    assert_eq!(
        got.json()["deleted"],
        3,
        "the warm-up, m2's entry, and m1's re-cached one"
    );
    assert_eq!(
        Call::chat(ask_model("m2", "third"))
            .headers(&alpha)
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    let v = get(&app, "/admin/entries?tenant=beta").await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 4);
    app.shutdown().await;
}

#[tokio::test]
async fn the_hit_log_pairs_each_probe_with_the_entry_it_got() {
    let (_up, _dir, app) = Gateway::with_mock_llm().await;
    verify_key(&app, &[]).await;
    Call::ask("How tall is Mount Everest").send(&app).await;
    settle(&app).await;
    let hit = Call::ask("Mount Everest: how tall is it").send(&app).await;
    assert_eq!(hit.cache(), "hit");
    let exact = Call::ask("How tall is Mount Everest").send(&app).await;
    assert_eq!(exact.cache(), "hit");
    settle(&app).await;
    let v = get(&app, "/admin/hits?tenant=default&limit=10").await;
    let rows = v["hits"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["exact"], true);
    assert_eq!(rows[0]["similarity"], 1.0);
    let sem = &rows[1];
    assert_eq!(sem["probe"], "user###Mount Everest: how tall is it");
    assert_eq!(sem["matched"], "user###How tall is Mount Everest");
    assert_eq!(sem["model"], "gpt-test");
    assert_eq!(sem["exact"], false);
    let sim = sem["similarity"].as_f64().unwrap();
    assert!(sim > 0.9 && sim <= 1.0, "{sim}");
    assert_eq!(
        sem["entry_id"].to_string(),
        hit.header("x-modelcache-entry")
    );
    assert!(get(&app, "/admin/hits?tenant=other").await["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    // A deleted entry's rows stay, marked as such.
    admin(
        &app,
        "DELETE",
        &format!("/admin/entries/{}", sem["entry_id"]),
        Value::Null,
    )
    .await;
    let v = get(&app, "/admin/hits").await;
    assert_eq!(v["hits"][1]["matched"], Value::Null);
    app.shutdown().await;
}

#[tokio::test]
async fn the_dry_run_lookup_explains_every_candidate_and_writes_nothing() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    verify_key(&app, &[]).await;
    Call::ask("How do I sort a list in Python").send(&app).await;
    settle(&app).await;
    let calls = up.calls();
    let before = (
        metrics(&app).await,
        get(&app, "/admin/hits").await,
        get(&app, "/admin/entries").await,
    );
    let requests = |m: &str| metric_sum(m, "modelcache_requests_total", &[]);

    // Same words, other order: a semantic hit, every check passed.
    let v = lookup(&app, json!({"tenant": "default", "model": "gpt-test", "messages": msgs("Python: how do I sort a list")})).await;
    assert_eq!(v["verdict"], "hit", "{v}");
    assert_eq!(v["hit"]["kind"], "semantic");
    assert_eq!(
        v["hit"]["question"],
        "user###How do I sort a list in Python"
    );
    let c = &v["candidates"][0];
    assert_eq!(c["served"], true);
    assert!(
        c["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["passed"] == true),
        "{c}"
    );
    let names: Vec<&str> = c["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "partition",
            "fresh",
            "numbers",
            "negation",
            "direction",
            "code",
            "language",
            "order",
            "long_text",
            "similarity"
        ]
    );
    assert_eq!(v["threshold"].as_f64().unwrap(), 0.9);
    // Another model: the candidate shows, failing the partition check.
    let v = lookup(
        &app,
        json!({"model": "gpt-other", "messages": msgs("How do I sort a list in Python")}),
    )
    .await;
    assert_eq!(v["verdict"], "miss");
    let c = &v["candidates"][0];
    assert_eq!(c["served"], false);
    assert_eq!(c["checks"][0]["passed"], false);
    assert!(
        c["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("model gpt-test"),
        "{c}"
    );
    // Other parameters: the same.
    let v = lookup(&app, json!({"model": "gpt-test", "messages": msgs("How do I sort a list in Python"), "params": {"temperature": 0}})).await;
    assert_eq!(v["verdict"], "miss");
    assert!(v["candidates"][0]["checks"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("parameters"));
    // Fewer shared words: below the threshold; and another language, which
    // the code guard names.
    let v = lookup(
        &app,
        json!({"model": "gpt-test", "messages": msgs("How do I sort a list in Rust")}),
    )
    .await;
    assert_eq!(v["verdict"], "miss");
    let check = |name: &str| {
        v["candidates"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(check("similarity")["passed"], false, "{v}");
    assert_eq!(check("code")["passed"], false, "{v}");
    assert_eq!(check("code")["detail"], "python vs rust", "{v}");
    let v = lookup(&app, json!({"model": "gpt-test", "messages": msgs("Python: how do I sort a list"), "threshold": 1.0})).await;
    assert_eq!(v["threshold"].as_f64().unwrap(), 1.0);
    // Exact repeats are found by the exact layer.
    let v = lookup(
        &app,
        json!({"model": "gpt-test", "messages": msgs("How do I sort a list in Python")}),
    )
    .await;
    assert_eq!(v["hit"]["kind"], "exact");
    assert_eq!(v["candidates"][0]["kind"], "exact");
    // Bad requests.
    for (body, status) in [
        (json!({"messages": msgs("x")}), 400),
        (json!({"model": "m"}), 400),
        (
            json!({"model": "m", "messages": msgs("x"), "tenant": "nobody"}),
            404,
        ),
        (
            json!({"model": "m", "messages": msgs("x"), "threshold": 3}),
            400,
        ),
    ] {
        assert_eq!(
            admin(&app, "POST", "/admin/lookup", body.clone())
                .await
                .status,
            status,
            "{body}"
        );
    }
    assert_eq!(
        admin(&app, "POST", "/admin/lookup", Value::Null)
            .await
            .status,
        400
    );

    // Nothing was written or counted.
    settle(&app).await;
    let after = (
        metrics(&app).await,
        get(&app, "/admin/hits").await,
        get(&app, "/admin/entries").await,
    );
    assert_eq!(up.calls(), calls);
    assert_eq!(requests(&after.0), requests(&before.0));
    assert_eq!(
        metric_sum(&after.0, "modelcache_similarity_count", &[]),
        metric_sum(&before.0, "modelcache_similarity_count", &[])
    );
    assert_eq!(after.1, before.1, "no hit logged");
    assert_eq!(after.2, before.2, "no entry written or touched");
    app.shutdown().await;
}

#[tokio::test]
async fn mutations_are_logged_with_who_made_them_and_never_the_token() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = up.url();
    let run = Binary::serve(&repo_root().join("config.toml"), dir.path())
        .envs(&[
            ("MODELCACHE_UPSTREAM_URL", url.as_str()),
            ("MODELCACHE_ADMIN_TOKEN", ADMIN_TOKEN),
        ])
        .start()
        .await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let h = [
        ("authorization", auth.as_str()),
        ("x-modelcache-actor", "alice@ops"),
    ];
    let ins = json!({"type": "insert", "scope": {"model": "m"}, "chat_info": [{"query": msgs("q1"), "answer": "a1"}, {"query": msgs("q2"), "answer": "a2"}]});
    let got = Call::new("POST", "/modelcache")
        .headers(&h)
        .body(ins.to_string())
        .send(run.admin)
        .await;
    assert_eq!(got.json()["writeStatus"], "success");
    let list = Call::get("/admin/entries")
        .headers(&h)
        .send(run.admin)
        .await
        .json();
    let id = list["entries"][0]["id"].as_i64().unwrap();
    let got = Call::new("DELETE", &format!("/admin/entries/{id}"))
        .headers(&h)
        .send(run.admin)
        .await;
    assert_eq!(got.status, 200);
    let got = Call::new("POST", "/admin/flush")
        .headers(&h)
        .body(json!({"tenant": "default", "model": "m"}).to_string())
        .send(run.admin)
        .await;
    assert_eq!(got.json()["deleted"], 1);
    let log = run.stop().await;
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} in:\n{log}"))
            .to_string()
    };
    let delete = line("admin delete");
    assert!(
        delete.contains("alice@ops")
            && delete.contains("admin token ")
            && delete.contains(&format!("id={id}")),
        "{delete}"
    );
    let flush = line("admin flush");
    assert!(
        flush.contains("alice@ops") && flush.contains("deleted=1"),
        "{flush}"
    );
    assert!(line("modelcache insert").contains("count=2"));
    assert!(
        !log.contains(ADMIN_TOKEN),
        "the token never reaches the log"
    );
    assert_no_file_contains(&dir.path().join("data"), ADMIN_TOKEN);
}

#[tokio::test]
async fn the_dry_run_knows_the_messages_and_responses_routes() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let claude = json!({"model": "claude-test", "max_tokens": 64,
                        "messages": [{"role": "user", "content": "What is a monad?"}]});
    let resp = json!({"model": "gpt-test", "input": "What is a monad?"});
    assert_eq!(Call::messages(&claude).send(&app).await.cache(), "miss");
    assert_eq!(Call::responses(&resp).send(&app).await.cache(), "miss");
    settle(&app).await;
    for (route, request) in [("messages", &claude), ("responses", &resp)] {
        // Call::messages sends anthropic-version, which is in the key.
        let headers = if route == "messages" {
            json!({"anthropic-version": "2023-06-01"})
        } else {
            json!({})
        };
        let v = lookup(
            &app,
            json!({"route": route, "request": request, "headers": headers}),
        )
        .await;
        assert_eq!(v["route"], route);
        assert_eq!(v["verdict"], "hit", "{v}");
    }
    // The same body as a chat is another partition.
    let v = lookup(&app, json!({"route": "chat", "request": claude})).await;
    assert_eq!(v["verdict"], "miss", "{v}");
    // A request on upstream state is explained, not served.
    let mut chained = resp.clone();
    chained["conversation"] = json!("conv_1");
    let got = admin(
        &app,
        "POST",
        "/admin/lookup",
        json!({"route": "responses", "request": chained}),
    )
    .await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.text().contains("state the upstream holds"));
    for bad in [
        json!({"route": "embeddings", "request": {"model": "e", "input": "x"}}),
        json!({"route": "nonsense", "request": {}}),
        json!({"route": "messages"}),
    ] {
        let got = admin(&app, "POST", "/admin/lookup", bad.clone()).await;
        assert_eq!(got.status, 400, "{bad}");
    }
    assert_eq!(up.calls(), 2, "the dry run never reaches the upstream");
    app.shutdown().await;
}
