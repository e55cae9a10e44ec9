//! The web console at `/ui`, for real: a gateway with the real model and
//! data, driven in headless Chromium (Debian's `chromium`) by Playwright
//! (`playwright-core` from npm, in tests/ui). The script signs in, reads the
//! tiles and the entry browser, runs "try a question" for a hit and a miss
//! (and for an Anthropic Messages request under its own route),
//! deletes an entry and sees it gone, and reads the hit log. Screenshots are
//! saved under the target folder's tmp dir (`console-screenshots/`).
//!
//! Needs `node`, `tests/ui/node_modules` (`make test` runs `npm ci` there) and
//! `/usr/bin/chromium` (or MC_CHROMIUM); `.ci/run` installs them.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

const SYSTEM: &str = "You are a helpful assistant.";

#[tokio::test]
async fn the_console_browses_tries_and_deletes_in_a_real_browser() {
    let (_up, _dir, app) = Gateway::with_mock_llm_real_model().await;
    let pairs = [
        (
            "How do I sort a list in Python?",
            "Use sorted(xs) for a new list, or xs.sort() in place.",
        ),
        ("What is the capital of France?", "Paris."),
        (
            "How do I reverse a string in JavaScript?",
            "str.split('').reverse().join('')",
        ),
        (
            "What does HTTP status 429 mean?",
            "Too Many Requests: slow down and retry later.",
        ),
    ];
    let body = json!({"type": "insert", "scope": {"model": "gpt-4o-mini"},
        "chat_info": pairs.iter().map(|(q, a)| json!({"query": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], "answer": a})).collect::<Vec<_>>()});
    assert_eq!(
        modelcache_call(
            &app,
            body,
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))]
        )
        .await
        .json()["writeStatus"],
        "success"
    );
    // Hits through the proxy, for the hit log.
    verify_key(&app, &[]).await;
    let paraphrase = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me the capital of France."}]});
    assert_eq!(Call::chat(paraphrase).send(&app).await.cache(), "hit");
    settle(&app).await;
    // An Anthropic Messages answer, for the console's other-API dry run.
    let claude = json!({"model": "claude-test", "max_tokens": 256,
        "messages": [{"role": "user", "content": "What is a monad in Haskell?"}]});
    assert_eq!(Call::messages(&claude).send(&app).await.cache(), "miss");
    settle(&app).await;

    let entries = admin(&app, "GET", "/admin/entries?model=gpt-4o-mini", Value::Null)
        .await
        .json();
    let id_of = |q: &str| {
        entries["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["question"].as_str().unwrap().ends_with(q))
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let scenario = json!({
        "tenant": "default",
        "model": "gpt-4o-mini",
        "paraphrase_system": SYSTEM,
        "paraphrase_user": "how can I sort a python list?",
        "expect_entry_id": id_of("How do I sort a list in Python?"),
        "delete_entry_id": id_of("What does HTTP status 429 mean?"),
        "unrelated_user": "What is the boiling point of water?",
        "messages_request": claude,
        "messages_headers": {"anthropic-version": "2023-06-01"},
    });
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let admin_url = format!("http://{}", app.admin_addr);
    let script = repo_root().join("tests/ui/console.mjs");
    let scenario_text = scenario.to_string();
    let shots_env = shots.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("MC_ADMIN_URL", admin_url)
            .env("MC_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("MC_SHOTS_DIR", shots_env)
            .env("MC_SCENARIO", scenario_text)
            .output()
    })
    .await
    .unwrap()
    .expect(
        "node is needed: run `make test` (or .ci/run), which installs what the console test uses",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the console test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("a /v1/messages request is a HIT under its route"),
        "the other-API dry run ran:\n{stdout}"
    );
    // The deletion was real: gone from the store and from lookups.
    let deleted = scenario["delete_entry_id"].as_i64().unwrap();
    let got = admin(
        &app,
        "GET",
        &format!("/admin/entries/{deleted}"),
        Value::Null,
    )
    .await;
    assert_eq!(got.status, 404);
    let probe = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "What does HTTP status 429 mean?"}]});
    let v = admin(&app, "POST", "/admin/lookup", probe).await.json();
    assert_eq!(v["verdict"], "miss", "{v}");
    for shot in ["01-connect", "05-try-hit", "07-deleted", "08-hits"] {
        let p = shots.join(format!("{shot}.png"));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{} is missing or empty", p.display());
    }
    println!("screenshots in {}", shots.display());
    app.shutdown().await;
}
