//! Correctness with the real model, through the proxy: every guard against
//! the failure it exists for (asc/desc, enable/disable, a changed number,
//! Python vs JavaScript, a changed system prompt, a changed earlier assistant
//! turn, an edit past token 256 of a long document), while paraphrases still
//! hit; text the model cannot see never judged by its similarity; guards
//! switched off per tenant; and `modelcache eval` on the binary.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn user(q: &str) -> Value {
    json!([{"role": "user", "content": q}])
}

fn req(messages: Value) -> Value {
    json!({"model": "gpt-test", "messages": messages})
}

/// A gateway on the real model in front of a mock LLM, its key verified.
async fn real_gateway() -> (Mock, tempfile::TempDir, modelcache::app::RunningApp) {
    let (up, dir, app) = Gateway::with_mock_llm_real_model().await;
    verify_key(&app, &[]).await;
    (up, dir, app)
}

/// Caches `stored` (a miss), then sends `probe`; returns how it was served.
async fn probe(
    app: &modelcache::app::RunningApp,
    up: &Mock,
    stored: Value,
    probe: Value,
) -> (String, Value) {
    let got = Call::chat(req(stored.clone())).send(&app).await;
    assert_eq!(got.status, 200);
    settle(app).await;
    let before = up.calls();
    let got = Call::chat(req(probe.clone())).send(&app).await;
    let served = got.cache();
    assert_eq!(
        up.calls(),
        before + usize::from(served != "hit"),
        "a miss is forwarded, a hit is not"
    );
    let dry = admin(
        app,
        "POST",
        "/admin/lookup",
        json!({"model": "gpt-test", "messages": probe}),
    )
    .await
    .json();
    (served, dry)
}

/// The failed checks of the dry run's candidate whose key text is `stored`.
fn failed(dry: &Value, stored: &str) -> Vec<String> {
    dry["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["question"] == stored)
        .map(|c| {
            c["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|k| k["passed"] == false)
                .map(|k| k["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_else(|| vec!["(no candidate)".into()])
}

#[tokio::test]
async fn guards_stop_the_wrong_answers_and_paraphrases_still_hit() {
    let (up, _dir, app) = real_gateway().await;

    // Paraphrases, typos and case still hit.
    let base = "How do I reverse a list in Python?";
    for p in [
        "how do i reverse a list in pyhton",
        "What's the way to reverse a Python list?",
    ] {
        let (served, dry) = probe(&app, &up, user(base), user(p)).await;
        assert_eq!(served, "hit", "{p}: {dry}");
    }

    // Each wrong answer, and the check that stops it.
    let cases: [(&str, &str, &str); 5] = [
        (
            "How do I sort a list in ascending order in Python?",
            "How do I sort a list in descending order in Python?",
            "negation",
        ),
        (
            "How do I enable two-factor authentication?",
            "How do I disable two-factor authentication?",
            "negation",
        ),
        ("What is 15% of 80?", "What is 15% of 90?", "numbers"),
        (
            "How do I read a file line by line in Python?",
            "How do I read a file line by line in JavaScript?",
            "code",
        ),
        (
            "How do I convert a string to an integer in Java?",
            "How do I convert an integer to a string in Java?",
            "direction",
        ),
    ];
    for (stored, asked, guard) in cases {
        let (served, dry) = probe(&app, &up, user(stored), user(asked)).await;
        assert_eq!(served, "miss", "{asked}: {dry}");
        let f = failed(&dry, &format!("user###{stored}"));
        assert!(f.contains(&guard.to_string()), "{asked}: {f:?} in {dry}");
    }

    // A changed system prompt and a changed earlier assistant turn: another
    // partition, whatever the similarity.
    let sys = |s: &str| json!([{"role": "system", "content": s}, {"role": "user", "content": "Summarise the French Revolution."}]);
    let (served, dry) = probe(
        &app,
        &up,
        sys("Answer in one sentence."),
        sys("Answer in three paragraphs."),
    )
    .await;
    assert_eq!(served, "miss");
    assert_eq!(
        failed(
            &dry,
            "system###Answer in one sentence.|||user###Summarise the French Revolution."
        ),
        ["partition"]
    );
    let turns = |a: &str| {
        json!([
            {"role": "user", "content": "Recommend a laptop."},
            {"role": "assistant", "content": a},
            {"role": "user", "content": "Which one is lighter?"}
        ])
    };
    let (served, _) = probe(
        &app,
        &up,
        turns("Consider the ThinkPad X1 or the Dell XPS 13."),
        turns("Consider the MacBook Air or the Surface Laptop."),
    )
    .await;
    assert_eq!(served, "miss");

    // A long document edited past token 256: the embedding barely moves,
    // the long-text guard sees the edit.
    let doc = policy_doc();
    let question = "\n\nAccording to the policy above, who should customers contact?";
    let long = format!("{doc}{question}");
    assert!(long.split_whitespace().count() > 300);
    let edited = long.replace("backorders", "subscriptions");
    let (served, dry) = probe(&app, &up, user(&long), user(&edited)).await;
    assert_eq!(served, "miss");
    let cand = dry["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["question"] == format!("user###{long}"))
        .unwrap()
        .clone();
    assert!(
        cand["similarity"].as_f64().unwrap() > 0.95,
        "the embedding alone would have served it: {cand}"
    );
    let f = failed(&dry, &format!("user###{long}"));
    assert!(f.contains(&"long_text".to_string()), "{f:?}");
    // The same document with its white space changed still hits.
    let spaced = long.replace(". The", ".  The");
    let got = Call::chat(req(user(&spaced))).send(&app).await;
    assert_eq!(got.cache(), "hit");
    app.shutdown().await;
}

#[tokio::test]
async fn opposite_words_miss_and_a_number_spelled_out_still_hits() {
    let (up, _dir, app) = real_gateway().await;
    // Each pair scores in the range of a one-word edit the model serves.
    for (stored, asked) in [
        (
            "Is coffee bad for your heart?",
            "Is coffee good for your heart?",
        ),
        (
            "What time does the sun set in London in June?",
            "What time does the sun rise in London in June?",
        ),
        (
            "Is it safe to eat raw eggs?",
            "Is it unsafe to eat raw eggs?",
        ),
        (
            "Explain photosynthesis briefly.",
            "Explain photosynthesis in detail.",
        ),
    ] {
        let (served, dry) = probe(&app, &up, user(stored), user(asked)).await;
        assert_eq!(served, "miss", "{asked}: {dry}");
        let f = failed(&dry, &format!("user###{stored}"));
        assert!(
            f.contains(&"negation".to_string()),
            "{asked}: {f:?} in {dry}"
        );
    }
    let (served, dry) = probe(
        &app,
        &up,
        user("What is the probability of rolling a 6 on a die?"),
        user("What's the chance of rolling a six on a die?"),
    )
    .await;
    assert_eq!(served, "hit", "{dry}");
    app.shutdown().await;
}

#[tokio::test]
async fn an_added_restriction_or_another_question_word_misses() {
    let (up, _dir, app) = real_gateway().await;
    // Words on one side only restrict the question: 0.917, over the
    // rewording threshold, under near-identity.
    let stored = "Can I cancel my order?";
    let (served, dry) = probe(
        &app,
        &up,
        user(stored),
        user("Can I cancel my order after it has shipped?"),
    )
    .await;
    assert_eq!(served, "miss", "{dry}");
    let f = failed(&dry, &format!("user###{stored}"));
    assert_eq!(f, vec!["similarity".to_string()], "{dry}");
    // The same history, the last question asks another kind of answer.
    let history = |last: &str| {
        json!([
            {"role": "user", "content": "Tell me about the Python programming language."},
            {"role": "assistant", "content": "Python is a high-level, general-purpose language. Anything specific?"},
            {"role": "user", "content": last},
        ])
    };
    let (served, dry) = probe(
        &app,
        &up,
        history("Who created it?"),
        history("When was it created?"),
    )
    .await;
    assert_eq!(served, "miss", "{dry}");
    // A question word for another that asks the same still hits.
    let (served, dry) = probe(
        &app,
        &up,
        user("What causes earthquakes?"),
        user("Why do earthquakes happen?"),
    )
    .await;
    assert_eq!(served, "hit", "{dry}");
    app.shutdown().await;
}

/// A 300-word store policy, one sentence per topic, the sentences alike
/// but for the topic.
fn policy_doc() -> String {
    [
        "returns",
        "refunds",
        "exchanges",
        "gift cards",
        "warranties",
        "repairs",
        "deliveries",
        "pickups",
        "invoices",
        "payments",
        "coupons",
        "memberships",
        "bundles",
        "preorders",
        "backorders",
        "rentals",
    ]
    .iter()
    .map(|topic| format!("The store policy for {topic} says that customers should contact support with their order details before anything is shipped back to the warehouse. "))
    .collect()
}

/// The candidate of the dry run whose key text is `stored`.
fn candidate(dry: &Value, stored: &str) -> Value {
    dry["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["question"] == stored)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_long_prompt_is_judged_by_the_sentence_that_changed() {
    let (up, _dir, app) = real_gateway().await;
    let doc = policy_doc();
    let task = "Summarize this policy in two sentences.";
    let long = format!("{task}\n\n{doc}");
    assert!(long.split_whitespace().count() > 300);
    let key = format!("user###{long}");

    // Another task with as many words, in front of the same document: the
    // whole-text embedding cannot tell them apart, the sentence can.
    let other = format!("List every policy topic as bullets.\n\n{doc}");
    assert_eq!(
        other.split_whitespace().count(),
        long.split_whitespace().count()
    );
    let (served, dry) = probe(&app, &up, user(&long), user(&other)).await;
    assert_eq!(served, "miss", "{dry}");
    let cand = candidate(&dry, &key);
    assert!(
        cand["similarity"].as_f64().unwrap() > 0.95,
        "the embedding alone would have served it: {cand}"
    );
    let f = failed(&dry, &key);
    assert!(f.contains(&"long_text".to_string()), "{f:?}");
    let why = cand["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "long_text")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("list every policy topic as bullets."), "{why}");

    // The same task moved after the document is the same request.
    let moved = format!("{doc}\n\n{task}");
    let (served, dry) = probe(&app, &up, user(&long), user(&moved)).await;
    assert_eq!(served, "hit", "{dry}");

    // A typo deep inside the document: the sentence still means the same.
    let at = long.rfind("warehouse").unwrap();
    let typo = format!(
        "{}warehuose{}",
        &long[..at],
        &long[at + "warehouse".len()..]
    );
    let (served, dry) = probe(&app, &up, user(&long), user(&typo)).await;
    assert_eq!(served, "hit", "{dry}");
    app.shutdown().await;
}

#[tokio::test]
async fn guards_can_be_switched_off_per_tenant() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[cache]
threshold = 0.7
verifier = false
[[tenants]]
name = "strict"
match_header = { name = "x-team", value = "strict" }
[[tenants]]
name = "loose"
[tenants.cache.guards]
negation = false
numbers = false
"#;
    let mut s = settings_from(toml, dir.path(), &[]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).start().await;
    let strict = [("x-team", "strict")];
    verify_key(&app, &strict).await;
    verify_key(&app, &[]).await;
    for (stored, asked) in [
        (
            "please enable dark mode now",
            "please disable dark mode now",
        ),
        (
            "set the timeout to 30 seconds",
            "set the timeout to 60 seconds",
        ),
    ] {
        Call::ask(stored).headers(&strict).send(&app).await;
        Call::ask(stored).send(&app).await;
        settle(&app).await;
        assert_eq!(
            Call::ask(asked).headers(&strict).send(&app).await.cache(),
            "miss",
            "{asked}: the guard stops it"
        );
        assert_eq!(
            Call::ask(asked).send(&app).await.cache(),
            "hit",
            "{asked}: without the guard, the embedding alone decides"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn modelcache_eval_scores_labelled_pairs_with_the_real_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    let lines = [
        json!({"id": "p1", "category": "coding", "same_answer": true,
               "cached": user("How do I reverse a list in Python?"), "probe": user("how do i reverse a list in pyhton")}),
        json!({"id": "p2", "category": "coding", "same_answer": false,
               "cached": user("How do I reverse a list in Python?"), "probe": user("How do I reverse a list in JavaScript?")}),
        json!({"id": "p3", "category": "support", "same_answer": false,
               "cached": user("How do I enable two-factor authentication?"), "probe": user("How do I disable two-factor authentication?")}),
        json!({"id": "p4", "category": "support", "same_answer": true,
               "cached": user("How do I reset my password?"), "probe": user("How can I reset my password?")}),
    ];
    std::fs::write(
        &pairs,
        lines
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let out = dir.path().join("preds.jsonl");
    let run = Command::new(bin())
        .current_dir(repo_root())
        .arg("eval")
        .arg(&pairs)
        .args(["--config", "config.toml", "--sweep", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for needle in [
        "coding",
        "support",
        "all",
        "recall at FPR <= 5%",
        "recommended: threshold",
    ] {
        assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
    }
    let preds: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |id: &str| preds.iter().find(|p| p["id"] == id).unwrap().clone();
    assert_eq!(by("p1")["hit"], true);
    assert_eq!(by("p4")["hit"], true);
    assert_eq!(by("p2")["hit"], false);
    assert!(by("p2")["failed"]
        .as_array()
        .unwrap()
        .contains(&json!("code")));
    assert_eq!(by("p3")["hit"], false);
    assert!(by("p3")["failed"]
        .as_array()
        .unwrap()
        .contains(&json!("negation")));
    assert_eq!(
        by("p3")["score"],
        0.0,
        "a guard failure is not a matter of threshold"
    );
    assert!(
        stdout.contains("all                      4    100.0%  100.0%   1.000    0.0%"),
        "{stdout}"
    );
}

#[tokio::test]
async fn text_the_model_cannot_see_is_never_judged_by_its_similarity() {
    let (up, _dir, app) = real_gateway().await;
    // To all-MiniLM-L6-v2 most of these characters are [UNK]: upload and
    // download differ only where it sees nothing, and so do two emoji. The
    // Chinese pair goes to the reader (multilingual-e5-small, the default),
    // whose similarity is the one judged; the emoji may be unknown to the
    // reader too, so they must be the same.
    for (stored, asked, reader) in [
        ("如何上传文件到服务器？", "如何从服务器下载文件？", true),
        ("What does 🫠 mean?", "What does 😭 mean?", false),
    ] {
        let (served, dry) = probe(&app, &up, user(stored), user(asked)).await;
        assert_eq!(served, "miss", "{asked}: {dry}");
        let f = failed(&dry, &format!("user###{stored}"));
        if reader {
            assert!(dry.to_string().contains("the reader's"), "{asked}: {dry}");
            assert!(!f.contains(&"unseen_text".to_string()), "{asked}: {f:?}");
        } else {
            assert!(
                f.contains(&"unseen_text".to_string()),
                "{asked}: {f:?} in {dry}"
            );
        }
        // The same question again is an exact hit.
        let before = up.calls();
        let again = Call::chat(req(user(asked))).send(&app).await;
        assert_eq!(
            (again.cache(), up.calls()),
            ("hit".to_string(), before),
            "{asked}"
        );
    }
    // A question whose unseen spans are the same still hits by meaning.
    let (served, dry) = probe(
        &app,
        &up,
        user("What does 🫠 mean in a text message?"),
        user("what does 🫠 mean in a text message"),
    )
    .await;
    assert_eq!(served, "hit", "{dry}");
    // Full-width digits are the digits they stand for: read as such by the
    // model and the unseen-text check, the same question hits.
    let (served, dry) = probe(
        &app,
        &up,
        user("10000円は何ドルですか？"),
        user("１００００円は何ドルですか？"),
    )
    .await;
    assert_eq!(served, "hit", "{dry}");
    // Each such miss is counted by the check that refused it.
    let m = metrics(&app).await;
    let refused = metric_sum(&m, "modelcache_refused_total", &["check=\"unseen_text\""]);
    assert!(refused >= 1.0, "{m}");
    app.shutdown().await;
}

/// The key text of a chat of user and assistant turns (the user turns,
/// ModelCache's way).
fn key_text(messages: &Value) -> String {
    messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| format!("user###{}", m["content"].as_str().unwrap()))
        .collect::<Vec<_>>()
        .join("|||")
}

/// A chat of one history and `last` as its last question.
fn after_history(last: &str) -> Value {
    json!([
        {"role": "user", "content": "Here are my monthly sales: January 120, February 150, March 90. Load them into a pandas DataFrame."},
        {"role": "assistant", "content": "Done: df = pd.DataFrame({'month': [...], 'sales': [120, 150, 90]})"},
        {"role": "user", "content": last}
    ])
}

#[tokio::test]
async fn a_changed_question_misses_however_it_changed_and_rewordings_still_hit() {
    let (up, _dir, app) = real_gateway().await;
    // (what changed, stored, asked, a check that must refuse it)
    let misses: [(&str, Value, Value, &str); 3] = [
        (
            "the last turn, after the same long history",
            after_history("Now plot it as a bar chart."),
            after_history("Now plot it as a pie chart."),
            "turn",
        ),
        (
            "the order of the same words (who did what to whom)",
            user("Why did Alice sue Bob after the merger?"),
            user("Why did Bob sue Alice after the merger?"),
            "order",
        ),
        (
            "the same words, the places exchanged",
            user("Find cheap flights from Denver to Boston in March."),
            user("Find cheap flights from Boston to Denver in March."),
            "order",
        ),
    ];
    for (what, stored, asked, check) in misses {
        let (served, dry) = probe(&app, &up, stored.clone(), asked).await;
        assert_eq!(served, "miss", "{what}: {dry}");
        let f = failed(&dry, &key_text(&stored));
        assert!(f.contains(&check.to_string()), "{what}: {f:?} in {dry}");
    }
    // A plain paraphrase, a typo, and the same question with a phrase moved
    // still hit.
    let hits: [(&str, &str); 3] = [
        (
            "How can I merge two dictionaries in Python?",
            "What's the way to merge two Python dictionaries?",
        ),
        (
            "How do I center a div with CSS flexbox?",
            "How do I center a div with CSS flexbx?",
        ),
        (
            "How do I remove duplicates from a list in Python?",
            "In Python, how do I remove duplicates from a list?",
        ),
    ];
    for (stored, asked) in hits {
        let (served, dry) = probe(&app, &up, user(stored), user(asked)).await;
        assert_eq!(served, "hit", "{asked}: {dry}");
    }
    // The same history with the last question reworded still hits, and
    // the dry run shows each turn's own similarity.
    let stored = after_history("Now plot the sales as a bar chart.");
    let (served, dry) = probe(
        &app,
        &up,
        stored.clone(),
        after_history("Now plot the sales as a bar chart, please."),
    )
    .await;
    assert_eq!(served, "hit", "{dry}");
    let turn = check(&dry, &key_text(&stored), "turn");
    assert_eq!(turn["passed"], true, "{dry}");
    assert!(turn["value"].as_f64().is_some(), "{turn}");
    app.shutdown().await;
}

/// The dry run's check `name` of the candidate whose key text is `stored`.
fn check(dry: &Value, stored: &str, name: &str) -> Value {
    dry["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["question"] == stored)
        .and_then(|c| {
            c["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["name"] == name)
                .cloned()
        })
        .unwrap_or_default()
}

/// A gateway on the real model with the pair model at `model`, its checks
/// tuned by `tune`.
async fn with_pair_model(
    model: std::path::PathBuf,
    tune: impl Fn(&mut modelcache::config::Policy),
) -> (Mock, tempfile::TempDir, modelcache::app::RunningApp) {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&up.url(), dir.path());
    s.embedding.pair_model = Some(model);
    policy(&mut s, &tune);
    let app = Gateway::new(s).real_model().start().await;
    verify_key(&app, &[]).await;
    (up, dir, app)
}

#[tokio::test]
async fn the_pair_model_judges_last_and_when_it_cannot_judge_the_answer_is_a_miss() {
    let stored = "How can I merge two dictionaries in Python?";
    let asked = "What's the way to merge two Python dictionaries?";
    let key = format!("user###{stored}");

    // Scored: its score is in the dry run, and a threshold it passes serves.
    let (up, _d, app) = with_pair_model(pair_model(), |p| p.verifier.pair_threshold = 0.001).await;
    let (served, dry) = probe(&app, &up, user(stored), user(asked)).await;
    assert_eq!(served, "hit", "{dry}");
    let pair = check(&dry, &key, "pair_model");
    let score = pair["value"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&score), "{pair}");
    assert_eq!(pair["passed"], true, "{pair}");
    let m = metrics(&app).await;
    assert!(
        metric_sum(&m, "modelcache_pair_model_total", &["outcome=\"scored\""]) >= 1.0,
        "{m}"
    );
    // A threshold above its score refuses the same pair.
    app.shutdown().await;
    let (up, _d, app) = with_pair_model(pair_model(), |p| p.verifier.pair_threshold = 0.9999).await;
    let (served, dry) = probe(&app, &up, user(stored), user(asked)).await;
    if score < 0.9999 {
        assert_eq!(served, "miss", "{dry}");
        assert!(
            failed(&dry, &key).contains(&"pair_model".to_string()),
            "{dry}"
        );
    }
    app.shutdown().await;

    // (the pair model, its limit, the check that refuses, the outcome counted)
    let cannot = [
        (
            pair_model(),
            std::time::Duration::ZERO,
            "pair_model_timeout",
            "timeout",
        ),
        // The embedding model is no pair model: it has no logits.
        (
            minilm_dir().join("model.onnx"),
            std::time::Duration::from_secs(30),
            "pair_model_error",
            "error",
        ),
    ];
    for (model, limit, refused, outcome) in cannot {
        let (up, _d, app) = with_pair_model(model, |p| p.verifier.pair_timeout = limit).await;
        let (served, dry) = probe(&app, &up, user(stored), user(asked)).await;
        assert_eq!(served, "miss", "{refused}: {dry}");
        let m = metrics(&app).await;
        assert!(
            metric_sum(
                &m,
                "modelcache_refused_total",
                &[&format!("check=\"{refused}\"")]
            ) >= 1.0,
            "{m}"
        );
        assert!(
            metric_sum(
                &m,
                "modelcache_pair_model_total",
                &[&format!("outcome=\"{outcome}\"")]
            ) >= 1.0,
            "{m}"
        );
        // An exact repeat needs no model and still hits.
        let before = up.calls();
        let got = Call::chat(req(user(stored))).send(&app).await;
        assert_eq!((got.status, got.cache()), (200, "hit".to_string()));
        assert_eq!(up.calls(), before);
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_chat_of_many_changed_turns_is_a_miss_not_unbounded_model_time() {
    let (up, _dir, app) = real_gateway().await;
    let chat = |end: &str| {
        let turns: Vec<Value> = (1..=10)
            .flat_map(|i| {
                [
                    json!({"role": "user", "content": format!("Tell me fact number {i} about the ocean{end}")}),
                    json!({"role": "assistant", "content": format!("Fact {i}.")}),
                ]
            })
            .collect();
        let mut v = Value::Array(turns);
        if let Some(a) = v.as_array_mut() {
            a.pop();
        }
        v
    };
    // Each of the ten user turns differs by its punctuation only: every
    // turn on its own would pass, but more than eight changed turns are not
    // embedded one by one.
    let (served, dry) = probe(&app, &up, chat("."), chat("!")).await;
    assert_eq!(served, "miss", "{dry}");
    let f = failed(&dry, &key_text(&chat(".")));
    assert!(f.contains(&"turn".to_string()), "{f:?} in {dry}");
    // Two changed turns are judged turn by turn, and hit.
    let mut fewer = chat(".");
    for i in [0, 2] {
        fewer[i]["content"] = json!(format!(
            "Tell me fact number {} about the ocean!",
            i / 2 + 1
        ));
    }
    let (served, dry) = probe(&app, &up, chat("."), fewer).await;
    assert_eq!(served, "hit", "{dry}");
    app.shutdown().await;
}
