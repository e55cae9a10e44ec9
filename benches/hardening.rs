//! Benchmark: what one long chat message costs the gateway and everyone else.
//!
//! Runs the binary (release, with the real model from `models/`) against the
//! test harness's mock upstream, and prints, for user messages of several
//! sizes: the gateway's resident memory before and at its peak, the long
//! request's own latency, and the latency of a short question asked while the
//! long one is in flight, next to the same short question asked alone in the
//! same run (the baseline). It only reports: nothing here asserts on a timing.
//!
//! Run it with `cargo bench --bench hardening` (after `make models`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

/// Short questions timed alone, for the baseline.
const ALONE: usize = 30;
/// Rounds per long-message size.
const ROUNDS: usize = 8;

/// A message size: its label and how to make a message of it (the salt
/// makes each one new, so each is a miss).
type Size = (&'static str, Box<dyn Fn(usize) -> String>);

/// Resident memory of the process `pid`, in MiB (0 if unknown).
fn rss_mib(pid: u32) -> f64 {
    proc_status(pid, "VmRSS").map_or(0.0, |kib| kib as f64 / 1024.0)
}

fn words(n: usize, salt: usize) -> String {
    let vocab = [
        "the",
        "quarterly",
        "report",
        "shows",
        "revenue",
        "growth",
        "in",
        "every",
        "region",
        "while",
        "costs",
        "stayed",
        "flat",
        "and",
        "hiring",
        "slowed",
    ];
    let mut out = format!("Document {salt}:");
    for i in 0..n {
        out.push(' ');
        out.push_str(vocab[(i * 7 + salt) % vocab.len()]);
    }
    out
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn timed(addr: std::net::SocketAddr, q: &str) -> f64 {
    let t = Instant::now();
    let got = Call::ask(q).send(addr).await;
    assert_eq!(got.status, 200, "{}", got.text());
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    // NOTE: `cargo test --all-targets` (make test) builds and runs benches too,
    // without `--bench`; there the bench only proves it compiles.
    if !std::env::args().any(|a| a == "--bench") {
        println!("hardening bench: built; run it with `cargo bench --bench hardening`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(bench());
}

async fn bench() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[upstream]\nurl = \"{}\"\n", up.url())).expect("config");
    let gw = Binary::serve(&config, dir.path()).start().await;
    let pid = gw.child.id();
    for i in 0..20 {
        timed(
            gw.proxy,
            &format!("Warm-up question number {i}: what is a cache?"),
        )
        .await;
    }
    let idle = rss_mib(pid);
    let alone: Vec<f64> = {
        let mut v = Vec::new();
        for i in 0..ALONE {
            v.push(timed(gw.proxy, &format!("Baseline {i}: how do I reverse a list?")).await);
        }
        v
    };
    let base50 = pct(alone.clone(), 0.5);
    println!("modelcache hardening bench: one long user message, and a short question beside it");
    println!(
        "idle RSS {idle:.0} MiB; a short question alone (a miss, embedded): p50 {base50:.1} ms, p95 {:.1} ms ({ALONE} requests)",
        pct(alone, 0.95)
    );
    println!();
    println!(
        "| message | long request p50 | short beside it p50 | max | p50 / alone | peak RSS | RSS over idle |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let sizes: [Size; 5] = [
        ("500 words", Box::new(|s| words(500, s))),
        ("1,500 words", Box::new(|s| words(1_500, s))),
        ("8,000 words", Box::new(|s| words(8_000, s))),
        ("20,000 words", Box::new(|s| words(20_000, s))),
        (
            "2 MiB",
            Box::new(|s| format!("{s} {}", "lorem ipsum ".repeat(2 * 1024 * 1024 / 12))),
        ),
    ];
    let mut salt = 0;
    for (label, make) in sizes.iter() {
        let mut long_ms = Vec::new();
        let mut short_ms = Vec::new();
        let mut peak = rss_mib(pid);
        for round in 0..ROUNDS {
            salt += 1;
            let text = make(salt);
            let addr = gw.proxy;
            let long = tokio::spawn(async move {
                let t = Instant::now();
                let got = Call::ask(&text).send(addr).await;
                assert_eq!(got.status, 200);
                t.elapsed().as_secs_f64() * 1000.0
            });
            // NOTE: give the long one time to reach the embedding thread.
            tokio::time::sleep(Duration::from_millis(15)).await;
            short_ms.push(timed(gw.proxy, &format!("{label} round {round}: what is Rust?")).await);
            long_ms.push(long.await.expect("the long request"));
            peak = peak.max(rss_mib(pid));
        }
        let s50 = pct(short_ms.clone(), 0.5);
        println!(
            "| {label} | {:.1} ms | {s50:.1} ms | {:.1} ms | {:.2}x | {peak:.0} MiB | +{:.0} MiB |",
            pct(long_ms, 0.5),
            pct(short_ms, 1.0),
            s50 / base50,
            peak - idle
        );
    }
    let _ = gw.stop().await;
}
