//! What `/metrics` says about real traffic: tokens and money saved, stream
//! time to first byte, the similarity histogram, entry and index gauges, and
//! labels that never take a value from a request.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn priced(up: &Mock) -> String {
    format!(
        r#"
[upstream]
url = "{}"
[cache]
threshold = 0.8
[prices]
"gpt-4o-mini*" = {{ prompt = 0.15, completion = 0.60 }}
"gpt-4o*" = {{ prompt = 2.50, completion = 10.00 }}
"#,
        up.url()
    )
}

#[tokio::test]
async fn hits_count_the_tokens_and_money_they_saved() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings_from(&priced(&up), dir.path(), &[]))
        .start()
        .await;
    let mut mini = ask("How much does this cost?");
    mini["model"] = json!("gpt-4o-mini-2024-07-18");
    let unpriced = ask("And this one, unpriced?");
    for body in [&mini, &unpriced] {
        Call::chat(body.clone()).send(&app).await;
        settle(&app).await;
        for _ in 0..2 {
            assert_eq!(Call::chat(body.clone()).send(&app).await.cache(), "hit");
        }
    }
    let m = metrics(&app).await;
    // The mock's usage is 11 prompt and 7 completion tokens; four hits.
    let tok = |kind: &str| {
        metric_sum(
            &m,
            "modelcache_saved_tokens_total",
            &["tenant=\"default\"", &format!("kind=\"{kind}\"")],
        )
    };
    assert_eq!((tok("prompt"), tok("completion")), (44.0, 28.0));
    let usd = |model: &str| {
        metric_sum(
            &m,
            "modelcache_saved_usd_total",
            &[&format!("model=\"{model}\"")],
        )
    };
    let want = 2.0 * (11.0 * 0.15 + 7.0 * 0.60) / 1e6;
    assert!((usd("gpt-4o-mini*") - want).abs() < 1e-12, "{m}");
    assert_eq!(usd("gpt-4o*"), 0.0, "the most specific price applies");
    assert_eq!(
        usd("other"),
        0.0,
        "an unpriced model saves tokens, not known money"
    );
    assert!(m.contains("modelcache_saved_usd_total{model=\"other\",tenant=\"default\"} 0"));
    app.shutdown().await;
}

#[tokio::test]
async fn streams_report_time_to_first_byte_and_lookups_their_similarity() {
    let up = mock(slow_stream(Duration::from_millis(30))).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings_from(&priced(&up), dir.path(), &[]))
        .start()
        .await;
    let mut q = ask("stream me the first byte quickly");
    q["stream"] = json!(true);
    Call::chat(q.clone()).send(&app).await;
    settle(&app).await;
    Call::chat(q.clone()).send(&app).await;
    let mut reordered = ask("quickly stream me the first byte");
    reordered["stream"] = json!(true);
    assert_eq!(Call::chat(reordered).send(&app).await.cache(), "hit");
    let mut other = ask("an unrelated question about gardening tools");
    other["stream"] = json!(true);
    assert_eq!(Call::chat(other).send(&app).await.cache(), "miss");
    let m = metrics(&app).await;
    let ttfb = |result: &str| {
        metric_sum(
            &m,
            "modelcache_stream_first_byte_seconds_count",
            &[&format!("result=\"{result}\"")],
        )
    };
    assert_eq!(
        (ttfb("miss"), ttfb("hit_exact"), ttfb("hit_semantic")),
        (2.0, 1.0, 1.0)
    );
    let sim = |result: &str| {
        metric_sum(
            &m,
            "modelcache_similarity_count",
            &["tenant=\"default\"", &format!("result=\"{result}\"")],
        )
    };
    // The first request was not looked up (its key was not verified yet);
    // the exact hit never reached the semantic layer.
    assert_eq!((sim("hit"), sim("miss")), (1.0, 1.0));
    let hit_low = metric_sum(
        &m,
        "modelcache_similarity_bucket",
        &["result=\"hit\"", "le=\"0.8\""],
    );
    assert_eq!(hit_low, 0.0, "a hit is never below the threshold");
    app.shutdown().await;
}

#[tokio::test]
async fn entry_and_index_gauges_follow_writes() {
    let (_up, _dir, app) = Gateway::with_mock_llm().await;
    for q in ["one question", "two questions", "three questions"] {
        Call::ask(q).send(&app).await;
    }
    settle(&app).await;
    let mut m = String::new();
    for _ in 0..40 {
        m = metrics(&app).await;
        if metric_sum(&m, "modelcache_entries", &["tenant=\"default\""]) == 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric_sum(&m, "modelcache_entries", &["tenant=\"default\""]),
        3.0,
        "{m}"
    );
    assert!(metric_sum(&m, "modelcache_index_bytes", &["tenant=\"default\""]) > 0.0);
    app.shutdown().await;
}

#[tokio::test]
async fn no_label_value_comes_from_a_request() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let mut weird = ask("label injection?");
    weird["model"] = json!("model-from-the-request-7731");
    weird["user"] = json!("user-from-the-request-7731");
    let h = [
        ("x-modelcache-namespace", "namespace-from-the-request-7731"),
        ("authorization", "Bearer key-from-the-request-7731"),
        ("x-team", "team-from-the-request-7731"),
    ];
    for _ in 0..2 {
        Call::chat(weird.clone()).headers(&h).send(&app).await;
        settle(&app).await;
    }
    Call::get("/v1/path-from-the-request-7731")
        .headers(&h)
        .send(&app)
        .await;
    assert_eq!(up.calls(), 2);
    let m = metrics(&app).await;
    assert!(m.contains("modelcache_saved_tokens_total"));
    // The marker is letters, not digits: a timing or a byte count may hold any
    // run of digits, a label copied from the request is the only way to hold this.
    assert!(
        !m.contains("from-the-request"),
        "a request value became a label:\n{m}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn every_bypass_is_counted_with_its_reason() {
    let (up, _dir, app) = Gateway::with_mock_llm().await;
    let bypassed = |m: &str, reason: &str| {
        metric_sum(
            m,
            "modelcache_bypass_total",
            &["tenant=\"default\"", &format!("reason=\"{reason}\"")],
        )
    };
    let m = metrics(&app).await;
    // Every reason exists at zero before any request.
    for reason in [
        "route",
        "unknown_caller",
        "cache_off",
        "no_store",
        "not_loaded",
        "body_too_large",
        "not_json",
        "bad_namespace",
        "too_hot",
        "not_an_object",
        "no_model",
        "bad_messages",
        "prompt_not_string",
    ] {
        assert!(
            m.contains(&format!(
                "modelcache_bypass_total{{reason=\"{reason}\",tenant=\"default\"}} 0"
            )),
            "{reason} is not exported at zero"
        );
    }
    let json = [("content-type", "application/json")];
    let got = Call::get("/v1/models").send(&app).await;
    assert_eq!(got.cache(), "bypass");
    let got = Call::new("POST", "/v1/chat/completions")
        .headers(&json)
        .body("{not json")
        .send(&app)
        .await;
    assert_eq!(got.cache(), "bypass");
    let got = Call::ask("Never stored")
        .header("cache-control", "no-store")
        .send(&app)
        .await;
    assert_eq!(got.cache(), "bypass");
    let got = Call::chat(json!({"model": "gpt-test"})).send(&app).await;
    assert_eq!(got.cache(), "bypass");
    let got = Call::ask("A namespace with a space")
        .header("x-modelcache-namespace", "a b")
        .send(&app)
        .await;
    assert_eq!(got.cache(), "bypass");
    let m = metrics(&app).await;
    for reason in [
        "route",
        "not_json",
        "no_store",
        "bad_messages",
        "bad_namespace",
    ] {
        assert_eq!(bypassed(&m, reason), 1.0, "{reason}");
    }
    assert_eq!(bypassed(&m, "too_hot"), 0.0);
    assert_eq!(
        metric_sum(&m, "modelcache_requests_total", &["result=\"bypass\""]),
        5.0
    );
    assert_eq!(up.calls(), 5, "each was forwarded");
    app.shutdown().await;
}
