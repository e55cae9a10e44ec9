//! End-to-end with the real embedding model (all-MiniLM-L6-v2 int8 through
//! fastembed and ONNX Runtime from ./models): a paraphrase hits, an unrelated
//! question misses. Run `make models` first.

mod common;

use common::*;

#[tokio::test]
async fn a_paraphrase_hits_and_an_unrelated_question_misses() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = real_gateway(settings(&up.url(), dir.path())).await;

    let first = chat(app.proxy_addr, ask("How do I reverse a list in Python?")).await;
    assert_eq!(first.cache(), "miss");
    settle(&app).await;

    let para = chat(
        app.proxy_addr,
        ask("What's the way to reverse a Python list?"),
    )
    .await;
    let sim = para.header("x-modelcache-similarity");
    eprintln!("paraphrase similarity: {sim}");
    assert_eq!(
        para.cache(),
        "hit",
        "paraphrase must hit (similarity {sim})"
    );
    assert!(para.header("cache-status").contains("semantic"));
    assert_eq!(content_of(&para), content_of(&first));
    assert_eq!(up.calls(), 1);

    for q in [
        "What is the boiling point of water at sea level?",
        "How do I reverse a string in Rust?",
        "Write a haiku about autumn leaves.",
    ] {
        let got = chat(app.proxy_addr, ask(q)).await;
        assert_eq!(got.cache(), "miss", "{q} must miss");
    }
    assert_eq!(up.calls(), 4);

    // The best similarity of every lookup lands in the histogram.
    let m = metrics(&app).await;
    assert!(metric_sum(&m, "modelcache_similarity_count", &[]) >= 4.0);
    assert!(metric_sum(&m, "modelcache_embedding_duration_seconds_count", &[]) >= 4.0);
    app.shutdown().await;
}
