//! Milvus as the shared vector index, beside the in-memory usearch index of
//! each replica, at `BENCH_MILVUS_ENTRIES` entries (default 100,000) of 384
//! dimensions (the default model's) in 16 partitions of one tenant:
//!
//! 1. **Filling**: the time to add every vector (usearch rebuilt as a
//!    replica rebuilds it; Milvus through the gateway's write queue, until
//!    the queue is empty).
//! 2. **Start-up**: what a replica does before it can search: usearch
//!    loads its snapshot (or rebuilds without one); Milvus needs one call
//!    that checks the collection.
//! 3. **Memory per replica**: usearch's index bytes; Milvus holds nothing
//!    in the replica. Milvus's own resident memory grows instead, read from
//!    its process before and after.
//! 4. **Lookup latency**: 1,000 searches filtered to a partition (k = 8), as
//!    a lookup makes them, each a stored vector nudged; and recall@1 of both
//!    against exact search.
//! 5. **Write to searchable**: a vector added through one replica, found by
//!    another replica's search in Milvus itself (not its overlay), over 200
//!    writes.
//!
//! Runs against the Milvus `scripts/milvus-up.sh` starts (`make bench-milvus`
//! does both), in a collection of its own that it drops at the end. It
//! asserts nothing on timings; it prints.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use modelcache::{
    config::Quantization,
    index::{
        milvus::{Milvus, MilvusSettings},
        BruteIndex, UsearchIndex, VectorIndex,
    },
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const DIMS: usize = 384;
const PARTITIONS: u64 = 16;
const PROBES: usize = 1_000;
const WRITES: usize = 200;

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn random(rng: &mut StdRng) -> Vec<f32> {
    unit((0..DIMS).map(|_| rng.random_range(-1.0f32..1.0)).collect())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Resident memory of the Milvus server process, in MiB.
fn milvus_rss_mib() -> Option<f64> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", "milvus run standalone"])
        .output()
        .ok()?;
    let pid = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn bench() -> Result<()> {
    let url = std::env::var("MODELCACHE_TEST_MILVUS_URL").context(
        "MODELCACHE_TEST_MILVUS_URL is not set: run `make bench-milvus`, which starts Milvus",
    )?;
    let n: usize = std::env::var("BENCH_MILVUS_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let settings = MilvusSettings {
        url,
        collection: format!("bench_{:08x}", rand::random::<u32>()),
        search_within: Duration::from_secs(10),
        queue: n + WRITES + 10,
    };
    let mut rng = StdRng::seed_from_u64(7);
    let vectors: Vec<Vec<f32>> = (0..n).map(|_| random(&mut rng)).collect();
    println!("## Milvus beside usearch: {n} entries, {DIMS} dimensions, {PARTITIONS} partitions\n");

    // 1 and 2. usearch as a replica opens it: rebuilt from the store's
    // vectors (no snapshot), then from the snapshot a clean stop saves.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.usearch");
    let rows: Vec<(u64, u64)> = (0..n as u64).map(|i| (i, i % PARTITIONS)).collect();
    let vectors_of = |ids: &[u64]| -> Vec<(u64, Vec<f32>)> {
        ids.iter()
            .map(|&i| (i, vectors[i as usize].clone()))
            .collect()
    };
    let t0 = Instant::now();
    let (built, rebuilt) = UsearchIndex::open(
        &path,
        "bench",
        DIMS,
        Quantization::F16,
        &rows,
        &[],
        vectors_of,
    )?;
    let usearch_fill = t0.elapsed();
    anyhow::ensure!(rebuilt, "a rebuild was expected");
    built.save(&path)?;
    drop(built);
    let t0 = Instant::now();
    let (usearch, rebuilt) = UsearchIndex::open(
        &path,
        "bench",
        DIMS,
        Quantization::F16,
        &rows,
        &[],
        vectors_of,
    )?;
    let usearch_load = t0.elapsed();
    anyhow::ensure!(!rebuilt, "the snapshot was expected to load");
    let rss_before = milvus_rss_mib();
    let writer = Milvus::connect(settings.clone(), DIMS)?;
    let result = (|| -> Result<()> {
        let w = writer.tenant("bench");
        let t0 = Instant::now();
        for (i, v) in vectors.iter().enumerate() {
            w.add(i as u64, i as u64 % PARTITIONS, v)?;
        }
        let left = writer.flush(Duration::from_secs(3600));
        let milvus_fill = t0.elapsed();
        anyhow::ensure!(left == 0, "{left} writes left queued");
        let t0 = Instant::now();
        let reader = Milvus::connect(settings.clone(), DIMS)?;
        let connect = t0.elapsed();
        let r = reader.tenant("bench");
        // Until Milvus shows the last vector written.
        let last = vectors.len() - 1;
        let t0 = Instant::now();
        while !r
            .search(&vectors[last], Some(last as u64 % PARTITIONS), 1)
            .is_ok_and(|f| f.first().map(|x| x.0) == Some(last as u64))
        {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "never searchable");
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("| | usearch (in each replica) | Milvus (shared) |\n| --- | ---: | ---: |");
        println!(
            "| fill {n} entries | {:.1} s | {:.1} s (+{:.1} s until searchable) |",
            usearch_fill.as_secs_f64(),
            milvus_fill.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        println!(
            "| replica start-up, before it can search | {:.1} s from a snapshot, {:.1} s rebuilding | {:.0} ms (connect) |",
            usearch_load.as_secs_f64(),
            usearch_fill.as_secs_f64(),
            connect.as_secs_f64() * 1000.0
        );
        let milvus_mem = match (rss_before, milvus_rss_mib()) {
            (Some(a), Some(b)) => format!("0 (Milvus server: +{:.0} MiB)", b - a),
            _ => "0".into(),
        };
        println!(
            "| index memory per replica | {:.0} MiB ({:.2} GiB per million) | {milvus_mem} |",
            usearch.memory_bytes() as f64 / 1048576.0,
            usearch.memory_bytes() as f64 / 1073741824.0 * 1e6 / n as f64
        );

        // 4. Lookup latency and recall@1, against exact search.
        let brute = BruteIndex::default();
        for (i, v) in vectors.iter().enumerate() {
            brute.add(i as u64, i as u64 % PARTITIONS, v)?;
        }
        let probes: Vec<(u64, Vec<f32>)> = (0..PROBES)
            .map(|_| {
                let i = rng.random_range(0..n);
                let v = unit(
                    vectors[i]
                        .iter()
                        .map(|x| x + rng.random_range(-0.03f32..0.03))
                        .collect(),
                );
                (i as u64 % PARTITIONS, v)
            })
            .collect();
        let mut results = Vec::new();
        for (label, idx) in [
            ("usearch", &usearch as &dyn VectorIndex),
            ("Milvus", &r as &dyn VectorIndex),
        ] {
            let (mut took, mut agree) = (Vec::new(), 0);
            for (tag, p) in &probes {
                let t0 = Instant::now();
                let got = idx.search(p, Some(*tag), 8)?;
                took.push(t0.elapsed());
                let want = brute.search(p, Some(*tag), 1)?;
                agree += usize::from(got.first().map(|x| x.0) == want.first().map(|x| x.0));
            }
            took.sort();
            results.push((label, took, agree));
        }
        println!("\n| lookup search (k = 8, one partition) | p50 | p99 | recall@1 |\n| --- | ---: | ---: | ---: |");
        let base = pct(&results[0].1, 0.5);
        for (label, took, agree) in &results {
            println!(
                "| {label} | {:.2} ms ({:.0}×) | {:.2} ms | {:.3} |",
                pct(took, 0.5),
                pct(took, 0.5) / base,
                pct(took, 0.99),
                *agree as f64 / PROBES as f64
            );
        }

        // 5. Written through one replica, searchable in Milvus on another.
        let mut took = Vec::new();
        for i in 0..WRITES {
            let id = (n + i) as u64;
            let v = random(&mut rng);
            let t0 = Instant::now();
            w.add(id, 0, &v)?;
            while !r
                .search(&v, Some(0), 1)
                .is_ok_and(|f| f.first().map(|x| x.0) == Some(id))
            {
                anyhow::ensure!(
                    t0.elapsed() < Duration::from_secs(60),
                    "write {i} never searchable"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            took.push(t0.elapsed());
            std::thread::sleep(Duration::from_millis(rng.random_range(0..100)));
        }
        took.sort();
        println!(
            "\nWritten on one replica, found in Milvus by another's search ({WRITES} writes): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            pct(&took, 0.5),
            pct(&took, 0.99),
            took.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
        Ok(())
    })();
    let _ = writer.drop_collection();
    result
}

fn main() -> ExitCode {
    // NOTE: `cargo test --all-targets` (make test) runs benches without
    // `--bench`; there this one only proves it compiles.
    if !std::env::args().any(|a| a == "--bench") {
        println!("milvus bench: built; run it with `make bench-milvus`");
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("milvus bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
