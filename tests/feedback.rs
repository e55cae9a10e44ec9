//! Feedback on served hits: `POST /admin/feedback` with the ids a hit was
//! served with. A wrong semantic hit stops the entry from answering that
//! neighbourhood (restart included); a wrong exact hit removes the entry; a
//! correct one is counted. Every verdict is counted in a metric.

mod common;

use common::*;
use serde_json::{json, Value};

async fn start_loose() -> (Mock, tempfile::TempDir, modelcache::app::RunningApp) {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(loose(&up, dir.path())).start().await;
    (up, dir, app)
}

/// The hashing embedder's similarities are bag-of-words overlaps: a low
/// threshold and no verifier make its near-duplicates hit.
fn loose(up: &Mock, dir: &std::path::Path) -> modelcache::config::Settings {
    let mut s = settings(&up.url(), dir);
    policy(&mut s, |p| {
        p.threshold = 0.7;
        p.verifier.enabled = false;
    });
    s
}

async fn feedback(app: &modelcache::app::RunningApp, got: &Got, correct: bool) -> Got {
    admin(
        app,
        "POST",
        "/admin/feedback",
        json!({"entry_id": got.header("x-modelcache-entry").parse::<i64>().unwrap(),
               "request_id": got.header("x-modelcache-request-id"), "correct": correct}),
    )
    .await
}

async fn dry_checks(app: &modelcache::app::RunningApp, q: &str, entry: i64) -> Vec<(String, bool)> {
    let v = dry_run(app, q).await;
    v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["entry_id"] == entry)
        .map(|c| {
            c["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| (k["name"].as_str().unwrap().to_string(), k["passed"] == true))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_wrong_semantic_hit_stops_that_neighbourhood_even_after_a_restart() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(loose(&up, dir.path())).start().await;
    verify_key(&app, &[]).await;
    let q = "alpha beta gamma delta";
    Call::ask(q).send(&app).await;
    settle(&app).await;
    let wrong = Call::ask("alpha beta gamma delta epsilon").send(&app).await;
    assert_eq!(wrong.cache(), "hit");
    assert!(wrong.header("x-modelcache-request-id").starts_with("mc-"));
    let entry: i64 = wrong.header("x-modelcache-entry").parse().unwrap();
    settle(&app).await;
    let got = feedback(&app, &wrong, false).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["action"], "negative");
    assert_eq!(got.json()["verdict"], "wrong");

    // The reported question, and one closer to it than to the entry's own,
    // are no longer answered by the entry.
    let calls = up.calls();
    let again = Call::ask("alpha beta gamma delta epsilon").send(&app).await;
    assert_eq!(again.cache(), "miss");
    assert_eq!(up.calls(), calls + 1);
    let near_wrong = "alpha beta gamma delta epsilon zeta";
    assert!(dry_checks(&app, near_wrong, entry)
        .await
        .contains(&("feedback".into(), false)));
    // A question closer to the entry's own is still answered by it.
    let near_right = "alpha beta gamma delta omega";
    let got = Call::ask(near_right).send(&app).await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(got.header("x-modelcache-entry"), entry.to_string());
    // The entry's own question still hits.
    assert_eq!(Call::ask(q).send(&app).await.cache(), "hit");
    let m = metrics(&app).await;
    assert_eq!(
        metric_sum(
            &m,
            "modelcache_feedback_total",
            &["tenant=\"default\"", "verdict=\"wrong\""]
        ),
        1.0
    );
    app.shutdown().await;

    // Kept on disk.
    let app = Gateway::new(loose(&up, dir.path())).start().await;
    assert!(dry_checks(&app, near_wrong, entry)
        .await
        .contains(&("feedback".into(), false)));
    assert!(!dry_checks(&app, near_right, entry)
        .await
        .contains(&("feedback".into(), false)));
    app.shutdown().await;
}

#[tokio::test]
async fn correct_hits_are_counted_and_a_wrong_exact_hit_removes_the_entry() {
    let (up, _dir, app) = start_loose().await;
    verify_key(&app, &[]).await;
    let q = "What is the refund window?";
    Call::ask(q).send(&app).await;
    settle(&app).await;
    let hit = Call::ask(q).send(&app).await;
    assert_eq!(hit.cache(), "hit");
    settle(&app).await;
    let got = feedback(&app, &hit, true).await;
    assert_eq!(got.json()["action"], "none");
    assert_eq!(Call::ask(q).send(&app).await.cache(), "hit");
    settle(&app).await;
    let got = feedback(&app, &hit, false).await;
    assert_eq!(
        got.json()["action"],
        "removed",
        "its answer is wrong for its own question"
    );
    let calls = up.calls();
    assert_eq!(Call::ask(q).send(&app).await.cache(), "miss");
    assert_eq!(up.calls(), calls + 1);
    let m = metrics(&app).await;
    let count = |v: &str| {
        metric_sum(
            &m,
            "modelcache_feedback_total",
            &[&format!("verdict=\"{v}\"")],
        )
    };
    assert_eq!((count("correct"), count("wrong")), (1.0, 1.0));
    // The hit log shows the request ids.
    let hits = admin(&app, "GET", "/admin/hits", Value::Null).await.json();
    assert!(hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["request_id"] == hit.header("x-modelcache-request-id")));
    app.shutdown().await;
}

#[tokio::test]
async fn feedback_needs_the_ids_of_a_real_hit() {
    let (_up, _dir, app) = start_loose().await;
    verify_key(&app, &[]).await;
    Call::ask("one question").send(&app).await;
    settle(&app).await;
    let hit = Call::ask("one question").send(&app).await;
    settle(&app).await;
    let entry: i64 = hit.header("x-modelcache-entry").parse().unwrap();
    let rid = hit.header("x-modelcache-request-id");
    for (body, status) in [
        (json!({"request_id": rid, "correct": false}), 400),
        (json!({"entry_id": entry, "correct": false}), 400),
        (json!({"entry_id": entry, "request_id": rid}), 400),
        (
            json!({"entry_id": entry, "request_id": "mc-0000000000000000", "correct": false}),
            404,
        ),
        (
            json!({"entry_id": entry + 1, "request_id": rid, "correct": false}),
            404,
        ),
    ] {
        let got = admin(&app, "POST", "/admin/feedback", body.clone()).await;
        assert_eq!(got.status, status, "{body}: {}", got.text());
    }
    // The ModelCache API's hits carry the same ids, in headers.
    let v = modelcache_call(
        &app,
        json!({"type": "query", "scope": {"model": "gpt-test"}, "query": [{"role": "user", "content": "one question"}]}),
        &[],
    )
    .await;
    assert_eq!(v.json()["cacheHit"], true);
    assert_eq!(v.header("x-modelcache-entry"), entry.to_string());
    settle(&app).await;
    assert_eq!(feedback(&app, &v, true).await.status, 200);
    app.shutdown().await;
}
