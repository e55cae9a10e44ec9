//! Calibrated thresholds: a tenant states the wrong-answer rate it accepts
//! (`max_wrong_rate`) and labelled pairs to measure it on; at start its
//! thresholds are moved until the rate holds on the pairs. Until then it
//! serves exact hits only. A tenant that states nothing keeps its thresholds.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn pair(id: &str, same: bool, cached: &str, probe: &str) -> String {
    json!({"id": id, "category": "t", "same_answer": same,
           "cached": [{"role": "user", "content": cached}],
           "probe": [{"role": "user", "content": probe}]})
    .to_string()
        + "\n"
}

async fn calibration_of(app: &modelcache::app::RunningApp, tenant: &str) -> Value {
    for _ in 0..200 {
        let v = admin(app, "GET", "/admin/tenants", Value::Null)
            .await
            .json();
        let t = v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == tenant)
            .unwrap()
            .clone();
        if t["calibration"]["pending"] == false {
            return t["calibration"].clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{tenant} was not calibrated within 5 s");
}

#[tokio::test]
async fn a_stated_wrong_answer_rate_moves_the_thresholds() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    // With the hashing embedder a one-word addition to four words scores
    // 0.894: over the 0.7 threshold. The pairs say such additions are wrong.
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        [
            pair(
                "a",
                false,
                "red green blue yellow",
                "red green blue yellow purple",
            ),
            pair("b", false, "one two three four", "one two three four five"),
            pair("c", true, "north south east west", "south north east west"),
            pair("d", true, "cats dogs birds fish", "dogs cats birds fish"),
        ]
        .concat(),
    )
    .unwrap();
    let toml = format!(
        r#"
[cache]
threshold = 0.7
verifier = false
[[tenants]]
name = "careful"
match_header = {{ name = "x-team", value = "careful" }}
[tenants.cache]
max_wrong_rate = 0.0
calibration_pairs = "{}"
[[tenants]]
name = "plain"
"#,
        pairs.display()
    );
    let mut s = settings_from(&toml, dir.path(), &[]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).start().await;
    let c = calibration_of(&app, "careful").await;
    assert_eq!(c["pairs"], 4);
    assert_eq!(c["wrong_rate_on_pairs"], 0.0);
    assert_eq!(c["recall_on_pairs"], 1.0);
    let offset = c["offset"].as_f64().unwrap();
    assert!(
        offset > 0.19 && offset < 0.3,
        "0.7 moved past 0.894: {offset}"
    );

    let careful = [("x-team", "careful")];
    verify_key(&app, &careful).await;
    verify_key(&app, &[]).await;
    for h in [&careful[..], &[]] {
        Call::ask("alpha beta gamma delta")
            .headers(h)
            .send(&app)
            .await;
    }
    settle(&app).await;
    // A one-word addition: the calibrated tenant forwards it, the other serves it.
    let added = ask("alpha beta gamma delta epsilon");
    assert_eq!(
        Call::chat(added.clone())
            .headers(&careful)
            .send(&app)
            .await
            .cache(),
        "miss"
    );
    assert_eq!(Call::chat(added).send(&app).await.cache(), "hit");
    // A reordering by one move (similarity 1) still hits in both.
    let reordered = ask("beta alpha gamma delta");
    assert_eq!(
        Call::chat(reordered.clone())
            .headers(&careful)
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    assert_eq!(Call::chat(reordered).send(&app).await.cache(), "hit");
    // The dry run shows the moved threshold.
    let v = admin(
        &app,
        "POST",
        "/admin/lookup",
        json!({"tenant": "careful", "model": "gpt-test", "messages": [{"role": "user", "content": "alpha beta gamma delta epsilon"}]}),
    )
    .await
    .json();
    assert!(
        (v["threshold"].as_f64().unwrap() - (0.7 + offset)).abs() < 1e-3,
        "{v}"
    );
    // The plain tenant has no calibration at all.
    let v = admin(&app, "GET", "/admin/tenants", Value::Null)
        .await
        .json();
    let plain = v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "plain")
        .unwrap()
        .clone();
    assert!(plain.get("calibration").is_none());
    app.shutdown().await;
}

#[test]
fn a_rate_needs_pairs_and_pairs_need_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for (text, needle) in [
        (
            "[cache]\nmax_wrong_rate = 0.02\n",
            "cache.calibration_pairs",
        ),
        (
            "[cache]\ncalibration_pairs = \"pairs.jsonl\"\n",
            "cache.max_wrong_rate",
        ),
        (
            "[cache]\nmax_wrong_rate = 2.0\ncalibration_pairs = \"/nonexistent/pairs.jsonl\"\n",
            "no such file",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = check_config(&path, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(needle), "{needle}: {err}");
    }
}
