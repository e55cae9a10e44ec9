//! End-to-end with the real embedding model (all-MiniLM-L6-v2 int8 through
//! fastembed and ONNX Runtime from ./models): a paraphrase hits, an unrelated
//! question misses. Run `make models` first.

mod common;

use common::*;

#[tokio::test]
async fn a_paraphrase_hits_and_an_unrelated_question_misses() {
    let (up, _dir, app) = Gateway::with_mock_llm_real_model().await;

    let first = Call::ask("How do I reverse a list in Python?")
        .send(&app)
        .await;
    assert_eq!(first.cache(), "miss");
    settle(&app).await;

    let para = Call::ask("What's the way to reverse a Python list?")
        .send(&app)
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
        let got = Call::ask(q).send(&app).await;
        assert_eq!(got.cache(), "miss", "{q} must miss");
    }
    assert_eq!(up.calls(), 4);

    // The best similarity of every lookup lands in the histogram.
    let m = metrics(&app).await;
    assert!(metric_sum(&m, "modelcache_similarity_count", &[]) >= 4.0);
    assert!(metric_sum(&m, "modelcache_embedding_duration_seconds_count", &[]) >= 4.0);
    app.shutdown().await;
}

#[tokio::test]
async fn long_texts_are_embedded_whole_not_cut_at_the_window() {
    use modelcache::embed::{Embedder, FastEmbedder};
    let m = FastEmbedder::load(&minilm_dir(), &onnxruntime(), 256, 1).unwrap();
    let body =
        "The quarterly report covers revenue, costs and hiring across every region. ".repeat(40);
    let a = format!("{body}Question: was revenue in the northern region higher than planned?");
    let b = format!("{body}Question: which team hired the most engineers in the last quarter?");
    let pieces = m.split(&a);
    assert!(pieces.len() > 2, "a ~500-token text needs several windows");
    // The pieces cover the whole text, in order.
    let joined: String = pieces.concat();
    assert!(joined.replace(' ', "").len() + 40 >= a.replace(' ', "").len());
    assert!(pieces.last().unwrap().contains("northern region"));

    let svc = modelcache::embed::EmbedService::start(
        std::sync::Arc::new(move || {
            FastEmbedder::load(&minilm_dir(), &onnxruntime(), 256, 1)
                .map(|e| Box::new(e) as Box<dyn Embedder>)
        }),
        modelcache::embed::EmbedLimits::new(1, 32, 16),
        None,
    )
    .unwrap();
    let va = svc.embed(&a).await.unwrap();
    let vb = svc.embed(&b).await.unwrap();
    let cos: f32 = va.iter().zip(&vb).map(|(x, y)| x * y).sum();
    eprintln!("cosine of two long texts that differ only past token 256: {cos}");
    assert!(
        cos < 0.9999,
        "text past the window must change the embedding (cos {cos})"
    );
    let default_long = modelcache::config::load(None, Vec::new(), &Default::default())
        .unwrap()
        .cache
        .policy
        .long_threshold;
    assert!(
        cos < default_long,
        "the default long-text threshold must tell them apart"
    );
    // A text inside the window is one piece, embedded as is.
    let one = m.split("How do I reverse a list in Python?");
    assert_eq!(one, vec!["How do I reverse a list in Python?".to_string()]);
}
