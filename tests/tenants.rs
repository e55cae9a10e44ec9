//! Tenants from the config file: isolation at every layer, matching by key,
//! header and model, unknown and unverified keys, and every policy setting.
//! Hits are proven by the upstream's call count and by whose answer came back.

mod common;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use common::*;
use modelcache::config::key_hash;
use serde_json::json;

fn sha(key: &str) -> String {
    hex::encode(key_hash(key))
}

/// Two key-matched tenants on two upstreams; semantic threshold 0.8 so that
/// reordered words (the hashing embedder) are paraphrases.
fn two_tenants(a: &Mock, b: &Mock) -> String {
    format!(
        r#"
[cache]
threshold = 0.8

[[tenants]]
name = "alpha"
keys_sha256 = ["{}"]
upstream = {{ url = "{}" }}

[[tenants]]
name = "beta"
keys_env = ["BETA_KEY"]
upstream = {{ url = "{}" }}
"#,
        sha("key-alpha"),
        a.url(),
        b.url()
    )
}

#[tokio::test]
async fn two_tenants_never_see_each_others_answers() {
    let (ua, ub) = (
        mock(llm_tagged("[A] ")).await,
        mock(llm_tagged("[B] ")).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [("BETA_KEY", "key-beta")];
    let s = settings_from(&two_tenants(&ua, &ub), dir.path(), &env);
    let app = Gateway::new(s.clone()).start().await;
    let q = "Which planet is the largest in the solar system";
    let paraphrase = "Which planet is the largest in the solar system ?";
    let reordered = "the largest planet in the solar system is which";

    // alpha caches q, and its repeat is a hit.
    let a1 = Call::ask(q).key("key-alpha").send(&app).await;
    assert!(content_of(&a1).starts_with("[A] "));
    settle(&app).await;
    let a2 = Call::ask(q).key("key-alpha").send(&app).await;
    assert_eq!(a2.cache(), "hit");
    assert_eq!(ua.calls(), 1);

    // beta asks the identical question: its own upstream, its own answer.
    let b1 = Call::ask(q).key("key-beta").send(&app).await;
    assert_eq!(b1.cache(), "miss");
    assert!(content_of(&b1).starts_with("[B] "), "{}", content_of(&b1));
    settle(&app).await;
    // A paraphrase hits beta's own entry, never alpha's.
    let b2 = Call::ask(paraphrase).key("key-beta").send(&app).await;
    assert_eq!(b2.cache(), "hit");
    assert!(b2.header("cache-status").contains("semantic"));
    assert_eq!(content_of(&b2), content_of(&b1));
    assert_eq!((ua.calls(), ub.calls()), (1, 1));

    // The semantic layer: alpha's reordered question finds alpha's answer.
    let a3 = Call::ask(reordered).key("key-alpha").send(&app).await;
    assert_eq!(a3.cache(), "hit");
    assert_eq!(content_of(&a3), content_of(&a1));
    settle(&app).await;
    app.shutdown().await;

    // After a restart, each tenant still gets only its own answers.
    let app = Gateway::new(s).start().await;
    verify_key(&app, &[("authorization", "Bearer key-alpha")]).await;
    verify_key(&app, &[("authorization", "Bearer key-beta")]).await;
    let (ca, cb) = (ua.calls(), ub.calls());
    for (key, want) in [("key-alpha", &a1), ("key-beta", &b1)] {
        for text in [q, reordered] {
            let got = Call::ask(text).key(key).send(&app).await;
            assert_eq!(got.cache(), "hit", "{key} {text}");
            assert_eq!(content_of(&got), content_of(want), "{key} {text}");
        }
    }
    assert_eq!((ua.calls(), ub.calls()), (ca, cb));
    let m = metrics(&app).await;
    assert!(
        metric_sum(
            &m,
            "modelcache_requests_total",
            &["tenant=\"alpha\"", "hit"]
        ) >= 2.0
    );
    assert!(metric_sum(&m, "modelcache_requests_total", &["tenant=\"beta\"", "hit"]) >= 2.0);
    app.shutdown().await;
}

#[tokio::test]
async fn namespaces_are_isolated_inside_a_tenant() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings_from(
        &format!(
            "[upstream]\nurl = \"{}\"\n[cache]\nthreshold = 0.8\n",
            up.url()
        ),
        dir.path(),
        &[],
    );
    let app = Gateway::new(s.clone()).start().await;
    let q = "Summarise my last three orders please";
    let ns = |n: &'static str| [("x-modelcache-namespace", n)];
    let u1 = Call::ask(q).headers(&ns("user-1")).send(&app).await;
    settle(&app).await;
    assert!(
        up.last().headers.get("x-modelcache-namespace").is_none(),
        "the gateway's own headers are not forwarded"
    );
    let again = Call::ask(q).headers(&ns("user-1")).send(&app).await;
    assert_eq!(again.cache(), "hit");
    assert_eq!(content_of(&again), content_of(&u1));
    assert_eq!(up.calls(), 1);
    // Another namespace, and no namespace, are other caches.
    let u2 = Call::ask(q).headers(&ns("user-2")).send(&app).await;
    assert_eq!(u2.cache(), "miss");
    let none = Call::ask(q).send(&app).await;
    assert_eq!(none.cache(), "miss");
    assert_eq!(up.calls(), 3);
    settle(&app).await;
    // Semantic hits stay inside the namespace too.
    let reordered = "please Summarise my last three orders";
    let s2 = Call::ask(reordered).headers(&ns("user-2")).send(&app).await;
    assert_eq!(s2.cache(), "hit");
    assert_eq!(content_of(&s2), content_of(&u2));
    let s3 = Call::ask(reordered).headers(&ns("user-3")).send(&app).await;
    assert_eq!(s3.cache(), "miss");
    assert_eq!(up.calls(), 4);
    settle(&app).await;
    app.shutdown().await;

    // And after a restart.
    let app = Gateway::new(s).start().await;
    verify_key(&app, &[]).await;
    let calls = up.calls();
    for (n, want) in [("user-1", &u1), ("user-2", &u2)] {
        let got = Call::ask(reordered).headers(&ns(n)).send(&app).await;
        assert_eq!(got.cache(), "hit", "{n}");
        assert_eq!(content_of(&got), content_of(want), "{n}");
    }
    assert_eq!(up.calls(), calls);
    app.shutdown().await;
}

#[tokio::test]
async fn a_namespace_with_a_space_or_a_tab_bypasses_the_cache() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let q = "Summarise my last three orders please";
    verify_key(&app, &[]).await;
    for bad in ["user 1", "user\t1"] {
        for _ in 0..2 {
            let got = Call::ask(q)
                .headers(&[("x-modelcache-namespace", bad)])
                .send(&app)
                .await;
            assert_eq!(got.status, 200);
            assert_eq!(got.cache(), "bypass", "{bad:?}");
        }
    }
    assert_eq!(up.calls(), 5, "every request went upstream");
    // The ModelCache API refuses it too.
    let got = modelcache_call(
        &app,
        json!({"type": "query", "scope": {"model": "gpt-test"}, "query": [{"role": "user", "content": q}]}),
        &[("x-modelcache-namespace", "user 1")],
    )
    .await;
    assert_eq!(got.json()["errorCode"], 103, "{}", got.text());
    assert!(got.json()["errorDesc"]
        .as_str()
        .unwrap()
        .contains("visible ASCII"));
    // A visible-ASCII namespace is cached as before.
    let ok = [("x-modelcache-namespace", "user-1")];
    assert_eq!(Call::ask(q).headers(&ok).send(&app).await.cache(), "miss");
    settle(&app).await;
    assert_eq!(Call::ask(q).headers(&ok).send(&app).await.cache(), "hit");
    assert_eq!(up.calls(), 6);
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_keys_in_passthrough_are_forwarded_and_never_cached() {
    let (tenant_up, open_up) = (
        mock(llm_tagged("[T] ")).await,
        mock(llm_tagged("[O] ")).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[upstream]
url = "{}"
[auth]
unknown_keys = "passthrough"
[[tenants]]
name = "team"
keys_sha256 = ["{}"]
upstream = {{ url = "{}" }}
"#,
        open_up.url(),
        sha("key-team"),
        tenant_up.url()
    );
    let app = Gateway::new(settings_from(&text, dir.path(), &[]))
        .start()
        .await;
    let q = "What is the capital of Australia";
    Call::ask(q).key("key-team").send(&app).await;
    settle(&app).await;
    assert_eq!(Call::ask(q).key("key-team").send(&app).await.cache(), "hit");
    // The identical question is cached for the tenant, yet a stranger goes
    // upstream every time, with or without a key.
    for (n, key) in [(1, Some("sk-stolen")), (2, Some("sk-stolen")), (3, None)] {
        let got = match key {
            Some(k) => Call::ask(q).key(k).send(&app).await,
            None => Call::ask(q).send(&app).await,
        };
        assert_eq!(got.status, 200);
        assert_eq!(got.cache(), "bypass");
        assert!(content_of(&got).starts_with("[O] "));
        assert_eq!(open_up.calls(), n);
        settle(&app).await;
    }
    assert_eq!(tenant_up.calls(), 1);
    let m = metrics(&app).await;
    assert_eq!(
        metric_sum(
            &m,
            "modelcache_requests_total",
            &["tenant=\"_unknown\"", "bypass"]
        ),
        3.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_keys_are_rejected_with_401_by_default() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[tenants]]\nname = \"team\"\nkeys_sha256 = [\"{}\"]\nupstream = {{ url = \"{}\" }}\n",
        sha("key-team"),
        up.url()
    );
    let app = Gateway::new(settings_from(&text, dir.path(), &[]))
        .start()
        .await;
    let q = ask("Is this cached?");
    Call::chat(q.clone()).key("key-team").send(&app).await;
    settle(&app).await;
    for key in ["sk-unknown", ""] {
        let got = Call::chat(q.clone()).key(key).send(&app).await;
        assert_eq!(got.status, 401);
        assert_eq!(got.json()["error"]["code"], "invalid_api_key");
        assert_eq!(got.json()["error"]["type"], "invalid_request_error");
        assert_eq!(got.cache(), "rejected");
    }
    let models = Call::get("/v1/models").send(&app).await;
    assert_eq!(models.status, 401, "every route, not only the cached ones");
    assert_eq!(up.calls(), 1);
    let m = metrics(&app).await;
    let unknown = ["tenant=\"_unknown\""];
    assert_eq!(
        metric_sum(&m, "modelcache_auth_total", &[unknown[0], "rejected"]),
        3.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "modelcache_requests_total",
            &[unknown[0], "result=\"error\""]
        ),
        3.0
    );
    app.shutdown().await;
}

/// An upstream that accepts only `sk-good*` keys, like OpenAI would.
fn strict_upstream() -> Handler {
    let inner = llm();
    Arc::new(move |seen: &Seen, n: usize| {
        let auth = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth.starts_with("Bearer sk-good") {
            inner(seen, n)
        } else {
            Reply::Full(
                401,
                vec![("content-type", "application/json".into())],
                Bytes::from(
                    json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                      "param": null, "code": "invalid_api_key"}})
                    .to_string(),
                ),
            )
        }
    })
}

#[tokio::test]
async fn a_key_the_upstream_refused_never_gets_a_hit() {
    let up = mock(strict_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[upstream]\nurl = \"{}\"\n[auth]\nverified_key_ttl = \"1s\"\n",
        up.url()
    );
    let app = Gateway::new(settings_from(&text, dir.path(), &[]))
        .start()
        .await;
    let q = ask("What does HTTP 418 mean?");
    let first = Call::chat(q.clone()).key("sk-good-1").send(&app).await;
    assert_eq!(first.status, 200);
    settle(&app).await;
    assert_eq!(
        Call::chat(q.clone())
            .key("sk-good-1")
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    assert_eq!(up.calls(), 1);

    // An invalid key asks the cached question: the upstream answers it, with 401, every time.
    for n in 2..=3 {
        let bad = Call::chat(q.clone()).key("sk-invalid").send(&app).await;
        assert_eq!(bad.status, 401);
        assert_ne!(bad.cache(), "hit");
        assert_eq!(up.calls(), n);
    }
    // A valid key the gateway has not seen: forwarded once, then it hits.
    let fresh = Call::chat(q.clone()).key("sk-good-2").send(&app).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(
        fresh.header("cache-status"),
        "modelcache; fwd=request; detail=unverified-key"
    );
    assert_eq!(up.calls(), 4);
    settle(&app).await;
    let fresh2 = Call::chat(q.clone()).key("sk-good-2").send(&app).await;
    assert_eq!(fresh2.cache(), "hit");
    assert_eq!(up.calls(), 4);

    // Verification lapses after verified_key_ttl: one more upstream call renews it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        Call::chat(q.clone())
            .key("sk-good-1")
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    assert_eq!(up.calls(), 5);
    settle(&app).await;
    assert_eq!(
        Call::chat(q.clone())
            .key("sk-good-1")
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    assert_eq!(up.calls(), 5);
    let m = metrics(&app).await;
    // sk-good-1 twice (first, lapsed), sk-invalid twice, sk-good-2 once.
    assert_eq!(
        metric_sum(&m, "modelcache_auth_total", &["outcome=\"unverified\""]),
        5.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn tenants_are_matched_by_header_and_by_model() {
    let (uh, um, uc) = (
        mock(llm_tagged("[H] ")).await,
        mock(llm_tagged("[M] ")).await,
        mock(llm_tagged("[C] ")).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[[tenants]]
name = "by-header"
match_header = {{ name = "x-team", value = "search" }}
upstream = {{ url = "{}" }}
[[tenants]]
name = "by-model"
match_models = ["ft:*:acme:*", "acme-*"]
upstream = {{ url = "{}" }}
[[tenants]]
name = "everyone-else"
upstream = {{ url = "{}" }}
"#,
        uh.url(),
        um.url(),
        uc.url()
    );
    let app = Gateway::new(settings_from(&text, dir.path(), &[]))
        .start()
        .await;
    let q = "Same question for every tenant";
    let h = Call::ask(q).header("x-team", "search").send(&app).await;
    assert!(content_of(&h).starts_with("[H] "));
    let mut by_model = ask(q);
    by_model["model"] = json!("ft:gpt-4o:acme:xyz");
    let m = Call::chat(by_model.clone()).send(&app).await;
    assert!(content_of(&m).starts_with("[M] "));
    let c = Call::ask(q).header("x-team", "other").send(&app).await;
    assert!(content_of(&c).starts_with("[C] "));
    // The header wins over the model pattern.
    let both = Call::chat(by_model)
        .header("x-team", "search")
        .send(&app)
        .await;
    assert!(content_of(&both).starts_with("[H] "));
    assert_eq!((uh.calls(), um.calls(), uc.calls()), (2, 1, 1));
    // A route with no model goes by header, else to the catch-all.
    Call::get("/v1/models")
        .header("x-team", "search")
        .send(&app)
        .await;
    Call::get("/v1/models").send(&app).await;
    assert_eq!((uh.calls(), uc.calls()), (3, 2));
    app.shutdown().await;
}

#[tokio::test]
async fn replace_mode_sends_the_tenant_key_and_hides_the_callers() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[[tenants]]
name = "virtual"
keys_env = ["GW_KEY"]
auth = "replace"
upstream = {{ url = "{}", api_key_env = "UPSTREAM_KEY", headers = {{ "OpenAI-Organization" = "org-acme" }} }}
"#,
        up.url()
    );
    let env = [
        ("GW_KEY", "gw-caller-secret"),
        ("UPSTREAM_KEY", "sk-provider-secret"),
    ];
    let app = Gateway::new(settings_from(&text, dir.path(), &env))
        .start()
        .await;
    let got = Call::ask("Hello through a virtual key")
        .headers(&[
            ("authorization", "Bearer gw-caller-secret"),
            ("api-key", "gw-caller-secret"),
        ])
        .send(&app)
        .await;
    assert_eq!(got.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["authorization"], "Bearer sk-provider-secret");
    assert_eq!(seen.headers["openai-organization"], "org-acme");
    for (name, value) in &seen.headers {
        assert!(
            !value.as_bytes().windows(8).any(|w| w == b"gw-calle"),
            "the caller's key reached the upstream in {name}"
        );
    }
    settle(&app).await;
    let again = Call::ask("Hello through a virtual key")
        .key("gw-caller-secret")
        .send(&app)
        .await;
    assert_eq!(again.cache(), "hit");
    // Another caller key is no tenant's: rejected, the provider key unused.
    let stranger = Call::ask("Hello through a virtual key")
        .key("sk-provider-secret")
        .send(&app)
        .await;
    assert_eq!(stranger.status, 401);
    assert_eq!(up.calls(), 1);
    app.shutdown().await;
    for secret in ["gw-caller-secret", "sk-provider-secret"] {
        assert_no_file_contains(&dir.path().join("data"), secret);
    }
}

/// One tenant on `up` with `[tenants.cache]` set to `cache`.
fn one_tenant(up: &Mock, cache: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\n[cache]\nthreshold = 0.8\n[[tenants]]\nname = \"t\"\n[tenants.cache]\n{cache}\n",
        up.url()
    )
}

/// The `llm()` mock and a gateway with one tenant whose `[tenants.cache]` is `cache`.
async fn one_tenant_app(cache: &str) -> (Mock, tempfile::TempDir, modelcache::app::RunningApp) {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings_from(&one_tenant(&up, cache), dir.path(), &[]))
        .start()
        .await;
    (up, dir, app)
}

#[tokio::test]
async fn mode_read_only_write_only_and_off() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let with = |mode: &str| {
        settings_from(
            &one_tenant(&up, &format!("mode = \"{mode}\"")),
            dir.path(),
            &[],
        )
    };
    let app = Gateway::new(with("write_only")).start().await;
    let (a, b) = (ask("Written but never read"), ask("Asked while read only"));
    // write_only: never served, but stored.
    for n in 1..=2 {
        let got = Call::chat(a.clone()).send(&app).await;
        assert_ne!(got.cache(), "hit");
        assert_eq!(up.calls(), n);
        settle(&app).await;
    }
    // read_only: serves what write_only stored, stores nothing new.
    app.reloader().reload(&with("read_only")).unwrap();
    let hit = Call::chat(a.clone()).send(&app).await;
    assert_eq!(hit.cache(), "hit", "write_only stored the answer");
    assert_eq!(up.calls(), 2);
    for n in 3..=4 {
        assert_eq!(Call::chat(b.clone()).send(&app).await.cache(), "miss");
        settle(&app).await;
        assert_eq!(up.calls(), n, "read_only stores nothing");
    }
    // off: a plain proxy, even for what is stored.
    app.reloader().reload(&with("off")).unwrap();
    assert_eq!(Call::chat(a.clone()).send(&app).await.cache(), "bypass");
    assert_eq!(up.calls(), 5);
    // enabled = false is off too; read_write is back to normal.
    app.reloader()
        .reload(&settings_from(
            &one_tenant(&up, "enabled = false"),
            dir.path(),
            &[],
        ))
        .unwrap();
    assert_eq!(Call::chat(a.clone()).send(&app).await.cache(), "bypass");
    app.reloader().reload(&with("read_write")).unwrap();
    assert_eq!(Call::chat(a).send(&app).await.cache(), "hit");
    assert_eq!(up.calls(), 6);
    app.shutdown().await;
}

#[tokio::test]
async fn ttl_expires_entries_and_caps_the_request_header() {
    let (up, dir, app) = one_tenant_app("ttl = \"700ms\"").await;
    let q = ask("How long do you live");
    // A longer x-modelcache-ttl is capped by the tenant's ttl.
    Call::chat(q.clone())
        .header("x-modelcache-ttl", "3600")
        .send(&app)
        .await;
    settle(&app).await;
    assert_eq!(Call::chat(q.clone()).send(&app).await.cache(), "hit");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        Call::chat(q.clone()).send(&app).await.cache(),
        "miss",
        "expired"
    );
    assert_eq!(up.calls(), 2);
    app.shutdown().await;

    // A shorter one is honoured.
    let app = Gateway::new(settings_from(
        &one_tenant(&up, "ttl = \"1h\""),
        dir.path(),
        &[],
    ))
    .start()
    .await;
    let q = ask("A short-lived answer please");
    verify_key(&app, &[]).await;
    Call::chat(q.clone())
        .header("x-modelcache-ttl", "1")
        .send(&app)
        .await;
    settle(&app).await;
    assert_eq!(Call::chat(q.clone()).send(&app).await.cache(), "hit");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(Call::chat(q).send(&app).await.cache(), "miss");
    app.shutdown().await;
}

#[tokio::test]
async fn max_entries_evicts_the_least_recently_hit_per_tenant() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[upstream]
url = "{}"
[[tenants]]
name = "small"
match_header = {{ name = "x-team", value = "small" }}
cache = {{ max_entries = 2 }}
[[tenants]]
name = "big"
match_header = {{ name = "x-team", value = "big" }}
"#,
        up.url()
    );
    let app = Gateway::new(settings_from(&text, dir.path(), &[]))
        .start()
        .await;
    let small = [("x-team", "small")];
    let big = [("x-team", "big")];
    let qs = ["first question", "second question", "third question"];
    for q in qs {
        Call::ask(q).headers(&small).send(&app).await;
        Call::ask(q).headers(&big).send(&app).await;
        settle(&app).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Hitting the oldest makes the second the least recently used.
    assert_eq!(
        Call::ask(qs[0]).headers(&small).send(&app).await.cache(),
        "hit"
    );
    settle(&app).await;
    app.sweep_now();
    settle(&app).await;
    let calls = up.calls();
    assert_eq!(
        Call::ask(qs[0]).headers(&small).send(&app).await.cache(),
        "hit"
    );
    assert_eq!(
        Call::ask(qs[2]).headers(&small).send(&app).await.cache(),
        "hit"
    );
    assert_eq!(up.calls(), calls);
    assert_eq!(
        Call::ask(qs[1]).headers(&small).send(&app).await.cache(),
        "miss",
        "the least recently hit entry was evicted"
    );
    // The other tenant keeps all three.
    for q in qs {
        assert_eq!(Call::ask(q).headers(&big).send(&app).await.cache(), "hit");
    }
    assert_eq!(up.calls(), calls + 1);
    app.shutdown().await;
}

#[tokio::test]
async fn max_messages_makes_long_chats_exact_only() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[upstream]
url = "{}"
[cache]
threshold = 0.8
[[tenants]]
name = "short"
match_header = {{ name = "x-team", value = "short" }}
cache = {{ max_messages = 2 }}
[[tenants]]
name = "long"
match_header = {{ name = "x-team", value = "long" }}
cache = {{ max_messages = 3 }}
"#,
        up.url()
    );
    let app = Gateway::new(settings_from(&text, dir.path(), &[]))
        .start()
        .await;
    let convo = |last: &str| {
        json!({"model": "gpt-test", "messages": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": last}]})
    };
    let (q, reordered) = (
        "list three uses of copper metal",
        "three uses of copper metal list",
    );
    for team in ["short", "long"] {
        Call::chat(convo(q))
            .headers(&[("x-team", team)])
            .send(&app)
            .await;
    }
    settle(&app).await;
    assert_eq!(up.calls(), 2);
    // Three messages: over the cap of 2, so only the identical chat hits.
    let short = [("x-team", "short")];
    assert_eq!(
        Call::chat(convo(reordered))
            .headers(&short)
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    assert_eq!(
        Call::chat(convo(q))
            .headers(&short)
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    // Within the cap of 3, the reordered question is a semantic hit.
    let long = [("x-team", "long")];
    let got = Call::chat(convo(reordered)).headers(&long).send(&app).await;
    assert_eq!(got.cache(), "hit");
    assert!(got.header("cache-status").contains("semantic"));
    assert_eq!(up.calls(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn hot_requests_skip_the_cache() {
    let (up, _dir, app) = one_tenant_app("skip_when_temperature_above = 0.5").await;
    let with_t = |t: Option<f64>| {
        let mut b = ask("Write me a poem about the sea");
        if let Some(t) = t {
            b["temperature"] = json!(t);
        }
        b
    };
    // 0.9, and no temperature (OpenAI's default is 1): never read, never written.
    for t in [Some(0.9), None] {
        for _ in 0..2 {
            let got = Call::chat(with_t(t)).send(&app).await;
            assert_eq!(got.cache(), "bypass");
            settle(&app).await;
        }
    }
    assert_eq!(up.calls(), 4);
    Call::chat(with_t(Some(0.2))).send(&app).await;
    settle(&app).await;
    assert_eq!(
        Call::chat(with_t(Some(0.2))).send(&app).await.cache(),
        "hit"
    );
    assert_eq!(up.calls(), 5);
    app.shutdown().await;
}

/// Answers every chat with finish_reason "length".
fn truncating() -> Handler {
    Arc::new(|seen: &Seen, n: usize| {
        Reply::Full(
            200,
            vec![("content-type", "application/json".into())],
            Bytes::from(chat_json(&answer_for(&question(seen), n), "length").to_string()),
        )
    })
}

#[tokio::test]
async fn cacheable_finish_reasons_filter_what_is_stored() {
    let up = mock(truncating()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[upstream]
url = "{}"
[[tenants]]
name = "strict"
match_header = {{ name = "x-team", value = "strict" }}
[[tenants]]
name = "lenient"
match_header = {{ name = "x-team", value = "lenient" }}
cache = {{ cacheable_finish_reasons = ["stop", "length"] }}
"#,
        up.url()
    );
    let app = Gateway::new(settings_from(&text, dir.path(), &[]))
        .start()
        .await;
    let q = ask("Tell me everything about everything");
    for team in ["strict", "lenient"] {
        let h = [("x-team", team)];
        Call::chat(q.clone()).headers(&h).send(&app).await;
        settle(&app).await;
        let again = Call::chat(q.clone()).headers(&h).send(&app).await;
        let want = if team == "strict" { "miss" } else { "hit" };
        assert_eq!(again.cache(), want, "{team}");
    }
    assert_eq!(up.calls(), 3);
    app.shutdown().await;
}
