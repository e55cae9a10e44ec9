//! Replicas on a shared PostgreSQL (and MySQL): how fast a write on one
//! replica becomes servable on another, how fast a replica starts over a
//! large table, and what each replica holds in memory per entry.
//!
//! Runs the release binary as separate processes against the real PostgreSQL
//! that `scripts/postgres-up.sh` starts (`make bench-replicas` does both), with
//! the real embedding model, in a schema of its own that it drops at the end.
//! Every figure is printed beside a baseline from the same run:
//!
//! 1. **Write on A, hit on B**, over `WRITES` writes: a `/modelcache` insert
//!    on A (it answers once the entry is stored), then dry-run lookups on B
//!    (`/admin/lookup`, which write nothing) until B's vector index returns
//!    the entry. With LISTEN/NOTIFY (the default), and with polling only
//!    (`[storage] notify = false`) as the baseline; and on MySQL (MariaDB
//!    from `scripts/mariadb-up.sh`), which can only poll, at its default
//!    interval and a shorter one, when `MODELCACHE_TEST_MYSQL_URL` is set;
//!    and on PostgreSQL with the vectors in Milvus (`scripts/milvus-up.sh`)
//!    when `MODELCACHE_TEST_MILVUS_URL` is set.
//!    Writes are spaced by a
//!    random pause of up to 250 ms, so that they do not fall in step with the
//!    polling interval.
//! 2. **Start-up over `ENTRIES` entries**: the time to `/readyz` and the time
//!    the vector index took to open, from a fresh data folder (a rebuild from
//!    the table) and from the snapshot a clean stop left (plus the change-log
//!    tail). The baseline is the same start over an empty table.
//! 3. **Memory**: resident memory of the replica over the table, minus that of
//!    one over an empty table, per entry and per million entries.
//!
//! Nothing here asserts on a timing; it prints. Environment:
//! `MODELCACHE_TEST_POSTGRES_URL` (the database), `MODELCACHE_TEST_MYSQL_URL`
//! (optional), `BENCH_ENTRIES` (0 skips 2 and 3),
//! `BENCH_WRITES`, `MODELCACHE_BIN` (the binary; default the release build).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    net::SocketAddr,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use common::{
    client, metric_sum, metrics, proc_status, release_bin, Binary, Call, HttpClient, Running,
    ADMIN_TOKEN,
};
use modelcache::store::{NewEntry, Origin, Store};
use serde_json::{json, Value};

/// Entries in the table for the start-up and memory runs.
const ENTRIES: usize = 100_000;
/// Writes timed from A to B, per mode.
const WRITES: usize = 1_000;
/// Dimensions of the default model (all-MiniLM-L6-v2).
const DIMS: usize = 384;
const READY_WITHIN: Duration = Duration::from_secs(3600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A shared store a replica runs on: its `[storage]` lines, and the URL
/// they read from `BENCH_DB_URL`.
#[derive(Clone)]
struct Shared {
    /// `[storage]` body after `url_env` (backend, schema, notify or poll),
    /// and an `[index]` table after it if the vectors are in Milvus.
    storage: String,
    url: String,
    /// Milvus's URL, read from `BENCH_MILVUS_URL`.
    milvus: Option<String>,
}

impl Shared {
    /// PostgreSQL, in `schema`, woken by LISTEN/NOTIFY or polling.
    fn postgres(url: &str, schema: &str, notify: bool) -> Shared {
        Shared {
            storage: format!("backend = \"postgres\"\nschema = \"{schema}\"\nnotify = {notify}"),
            url: url.into(),
            milvus: None,
        }
    }

    /// PostgreSQL with LISTEN/NOTIFY, the vectors in a Milvus collection.
    fn postgres_milvus(url: &str, schema: &str, milvus: &str) -> Shared {
        Shared {
            storage: format!(
                "backend = \"postgres\"\nschema = \"{schema}\"\n[index]\nbackend = \"milvus\"\nurl_env = \"BENCH_MILVUS_URL\"\ncollection = \"{schema}\""
            ),
            url: url.into(),
            milvus: Some(milvus.into()),
        }
    }

    /// MySQL (MariaDB here), in database `db`, polling every `poll`.
    fn mysql(url: &str, db: &str, poll: &str) -> Shared {
        Shared {
            storage: format!("backend = \"mysql\"\nschema = \"{db}\"\npoll_interval = \"{poll}\""),
            url: url.into(),
            milvus: None,
        }
    }
}

/// Starts a replica, `modelcache serve` on the shared store with its own
/// data folder; how long it took to be ready.
async fn replica(bin: &Path, dir: &Path, shared: &Shared) -> Result<(Running, Duration)> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndrain_timeout = \"5s\"\n[storage]\nurl_env = \"BENCH_DB_URL\"\n{}\n[admin]\ntoken_env = \"BENCH_ADMIN_TOKEN\"\n",
            shared.storage
        ),
    )?;
    let t0 = Instant::now();
    let r = Binary::serve(&config, dir)
        .bin(bin)
        // Never called: every write is an insert through /modelcache.
        .args(&["--upstream", "http://127.0.0.1:9"])
        .only_defaults()
        .env("BENCH_DB_URL", &shared.url)
        .env("BENCH_MILVUS_URL", shared.milvus.as_deref().unwrap_or(""))
        .env("BENCH_ADMIN_TOKEN", ADMIN_TOKEN)
        .rust_log("info,ort=warn")
        .ready_within(READY_WITHIN)
        .start()
        .await;
    Ok((r, t0.elapsed()))
}

/// `ms` of the "vector index open" log line of the default tenant.
fn index_open_ms(r: &Running) -> Option<u64> {
    r.log()
        .lines()
        .filter(|l| l.contains("vector index open") && l.contains("tenant=\"default\""))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
        })
}

/// `modelcache_index_bytes` of the default tenant.
async fn index_bytes(r: &Running) -> f64 {
    metric_sum(
        &metrics(r).await,
        "modelcache_index_bytes",
        &["tenant=\"default\""],
    )
}

/// An admin call on `client`: the status and the JSON (null if none).
async fn call(client: &HttpClient, addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let got = Call::admin("POST", path, body).send_on(client, addr).await;
    (
        got.status,
        serde_json::from_slice(&got.body).unwrap_or(Value::Null),
    )
}

fn messages(q: &str) -> Value {
    json!([{"role": "user", "content": q}])
}

/// Whether B's vector index returns the entry of `q` (a dry run). The probe
/// is a rewording, so that the exact layer (which reads the shared table)
/// cannot answer in the index's place.
async fn indexed_on(client: &HttpClient, b: SocketAddr, q: &str) -> bool {
    let (_, v) = call(
        client,
        b,
        "/admin/lookup",
        json!({"model": "bench", "messages": messages(&format!("Tell me: {q}"))}),
    )
    .await;
    let want = format!("user###{q}");
    v["candidates"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["kind"] == "semantic" && c["question"] == want.as_str())
    })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Write on A, wait until B's index has it; `writes` times.
async fn write_to_hit(
    client: &HttpClient,
    a: SocketAddr,
    b: SocketAddr,
    writes: usize,
    tag: &str,
) -> Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(writes);
    for i in 0..writes {
        // NOTE: a random pause first, so that writes do not fall in step with
        // the polling interval (each would then wait a whole one).
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..250))).await;
        let q = format!("{tag} question number {i}: what is the capital of country {i}?");
        let (status, v) = call(
            client,
            a,
            "/modelcache",
            json!({"type": "insert", "scope": {"model": "bench"},
                   "chat_info": [{"query": messages(&q), "answer": format!("answer {i}")}]}),
        )
        .await;
        if status != 200 || v["writeStatus"] != "success" {
            bail!("insert on A failed: {status} {v}");
        }
        let t0 = Instant::now();
        loop {
            if indexed_on(client, b, &q).await {
                took.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let (_, v) = call(
                    client,
                    b,
                    "/admin/lookup",
                    json!({"model": "bench", "messages": messages(&q)}),
                )
                .await;
                bail!("write {i} never reached B; B's lookup: {v}");
            }
        }
    }
    took.sort();
    Ok(took)
}

fn print_latency(label: &str, took: &[Duration]) {
    let mean = took.iter().map(Duration::as_secs_f64).sum::<f64>() / took.len() as f64 * 1000.0;
    println!(
        "| {label} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        took.len(),
        pct(took, 0.5),
        pct(took, 0.99),
        mean,
        pct(took, 1.0)
    );
}

/// A unit vector of `DIMS` pseudo-random numbers.
fn vector(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..DIMS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

/// Fills the schema with `n` entries of the default tenant, 1,000 per
/// transaction.
fn seed(pg: &str, schema: &str, n: usize) -> Result<()> {
    let store = modelcache::store::postgres::PgStore::open(pg, 1, Some(schema))?;
    let now = modelcache::clock::now_ms();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<NewEntry> = chunk
            .iter()
            .map(|&i| NewEntry {
                tenant: "default".into(),
                partition: format!("p{}", i % 8),
                exact_hash: format!("seed-{i}"),
                endpoint: "chat".into(),
                model: "seed".into(),
                text: format!("user###seeded question {i}"),
                params: "{}".into(),
                answer: format!("{{\"seeded\":{i}}}"),
                embedding: Some(vector(i as u64 + 1)),
                created_at: now,
                expires_at: now + 86_400_000,
                origin: Origin::Api,
            })
            .collect();
        store.insert_batch(&batch)?;
    }
    Ok(())
}

fn drop_schema(pg: &str, schema: &str) {
    // NOTE: the blocking client runs a runtime of its own: off this one.
    tokio::task::block_in_place(|| {
        if let Ok(mut c) = postgres::Client::connect(pg, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
        }
    });
}

async fn bench() -> Result<()> {
    let pg = std::env::var("MODELCACHE_TEST_POSTGRES_URL").context(
        "MODELCACHE_TEST_POSTGRES_URL is not set: run `make bench-replicas`, which starts PostgreSQL",
    )?;
    let entries = env_usize("BENCH_ENTRIES", ENTRIES);
    let writes = env_usize("BENCH_WRITES", WRITES);
    let bin = release_bin().map_err(anyhow::Error::msg)?;
    let client = client();
    let tmp = tempfile::tempdir()?;
    let run = format!("{:08x}", rand::random::<u32>());

    // 1. A write on A becomes a hit on B (BENCH_WRITES=0 skips it).
    if writes > 0 {
        write_then_hit(&client, &bin, tmp.path(), &pg, &run, writes).await?;
    }
    // 2 and 3 (BENCH_ENTRIES=0 skips them).
    if entries == 0 {
        return Ok(());
    }
    start_up_and_memory(&bin, tmp.path(), &pg, &run, entries).await
}

async fn write_then_hit(
    client: &HttpClient,
    bin: &Path,
    tmp: &Path,
    pg: &str,
    run: &str,
    writes: usize,
) -> Result<()> {
    let mysql = std::env::var("MODELCACHE_TEST_MYSQL_URL").ok();
    println!("## Write on A, hit on B ({writes} writes per mode)\n");
    println!(
        "| store and mode | writes | p50 | p99 | mean | max |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut modes = vec![
        (
            "PostgreSQL, LISTEN/NOTIFY (default)",
            Shared::postgres(pg, &format!("bench_rep_{run}_listen"), true),
        ),
        (
            "PostgreSQL, polling only, every 250 ms (baseline)",
            Shared::postgres(pg, &format!("bench_rep_{run}_poll"), false),
        ),
    ];
    match &mysql {
        Some(url) => {
            for (label, poll) in [
                ("MySQL (MariaDB), polling every 100 ms (default)", "100ms"),
                ("MySQL (MariaDB), polling every 25 ms", "25ms"),
            ] {
                modes.push((
                    label,
                    Shared::mysql(url, &format!("mctest_bench_{run}_{poll}"), poll),
                ));
            }
        }
        None => eprintln!("MODELCACHE_TEST_MYSQL_URL is not set: MySQL is left out"),
    }
    match std::env::var("MODELCACHE_TEST_MILVUS_URL") {
        Ok(url) => modes.push((
            "PostgreSQL, LISTEN/NOTIFY, vectors in Milvus",
            Shared::postgres_milvus(pg, &format!("bench_rep_{run}_milvus"), &url),
        )),
        Err(_) => eprintln!("MODELCACHE_TEST_MILVUS_URL is not set: Milvus is left out"),
    }
    for (i, (label, shared)) in modes.iter().enumerate() {
        let (a, _) = replica(bin, &tmp.join(format!("a{i}")), shared).await?;
        let (b, _) = replica(bin, &tmp.join(format!("b{i}")), shared).await?;
        // Warm both (model, connections) before timing.
        write_to_hit(client, a.admin, b.admin, 20, "warm").await?;
        let took = write_to_hit(client, a.admin, b.admin, writes, "timed").await?;
        print_latency(label, &took);
        a.stop().await;
        b.stop().await;
        drop_store(shared).await;
    }
    // What one dry-run lookup costs: the resolution of the figures above.
    {
        let shared = Shared::postgres(pg, &format!("bench_res_{run}"), true);
        let (a, _) = replica(bin, &tmp.join("res"), &shared).await?;
        let mut t = Vec::new();
        for i in 0..200 {
            let t0 = Instant::now();
            indexed_on(client, a.admin, &format!("resolution probe {}", i % 10)).await;
            t.push(t0.elapsed());
        }
        t.sort();
        println!(
            "\nOne dry-run lookup on B (the polling step): p50 {:.1} ms",
            pct(&t, 0.5)
        );
        a.stop().await;
        drop_store(&shared).await;
    }
    Ok(())
}

/// Drops the schema (PostgreSQL) or database (MySQL) a run made.
async fn drop_store(shared: &Shared) {
    let name = shared
        .storage
        .lines()
        .find_map(|l| l.strip_prefix("schema = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .unwrap_or_default();
    if shared.storage.contains("\"mysql\"") {
        if let Ok(mut c) = mysql_async::Conn::from_url(shared.url.as_str()).await {
            use mysql_async::prelude::Queryable;
            let _ = c
                .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                .await;
            let _ = c.disconnect().await;
        }
    } else {
        drop_schema(&shared.url, &name);
    }
    if let Some(url) = &shared.milvus {
        let settings = modelcache::index::milvus::MilvusSettings {
            url: url.clone(),
            collection: name,
            search_within: Duration::from_secs(5),
            queue: 1,
        };
        if let Ok(m) = modelcache::index::milvus::Milvus::connect(settings, DIMS) {
            let _ = m.drop_collection();
        }
    }
}

/// 2 and 3. Start-up and memory over a large table.
async fn start_up_and_memory(
    bin: &Path,
    tmp: &Path,
    pg: &str,
    run: &str,
    entries: usize,
) -> Result<()> {
    println!("\n## Start-up over {entries} entries\n");
    let empty_schema = format!("bench_empty_{run}");
    let (empty, empty_ready) = replica(
        bin,
        &tmp.join("empty"),
        &Shared::postgres(pg, &empty_schema, true),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let empty_rss = proc_status(empty.pid(), "VmRSS").unwrap_or(0);
    empty.stop().await;
    drop_schema(pg, &empty_schema);

    let schema = format!("bench_big_{run}");
    let t0 = Instant::now();
    tokio::task::block_in_place(|| seed(pg, &schema, entries))?;
    eprintln!(
        "seeded {entries} entries in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let dir = tmp.join("big");
    let big = Shared::postgres(pg, &schema, true);
    let (cold, cold_ready) = replica(bin, &dir, &big).await?;
    let cold_ms = index_open_ms(&cold);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let big_rss = proc_status(cold.pid(), "VmRSS").unwrap_or(0);
    let index_bytes = index_bytes(&cold).await;
    cold.stop().await;
    // A few changes after the snapshot: the tail the next start applies.
    tokio::task::block_in_place(|| -> Result<()> {
        let store = modelcache::store::postgres::PgStore::open(pg, 1, Some(&schema))?;
        store.delete("default", &[1, 2, 3])?;
        Ok(())
    })?;
    let (warm, warm_ready) = replica(bin, &dir, &big).await?;
    let warm_ms = index_open_ms(&warm);
    let warm_log = warm.log();
    warm.stop().await;
    drop_schema(pg, &schema);
    if !warm_log.contains("rebuilt=false") {
        bail!("the second start did not use the snapshot:\n{warm_log}");
    }
    let ms = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{v} ms"));
    println!("| start | to /readyz | vector index open |\n| --- | ---: | ---: |");
    println!(
        "| empty table (baseline) | {:.2} s | |",
        empty_ready.as_secs_f64()
    );
    println!(
        "| {entries} entries, fresh data folder (rebuild from the table) | {:.2} s | {} |",
        cold_ready.as_secs_f64(),
        ms(cold_ms)
    );
    println!(
        "| {entries} entries, snapshot + change-log tail | {:.2} s | {} |",
        warm_ready.as_secs_f64(),
        ms(warm_ms)
    );
    if let (Some(c), Some(w)) = (cold_ms, warm_ms) {
        println!(
            "\nIndex open, snapshot against rebuild: {:.3}x ({:.1} times faster)",
            w as f64 / c.max(1) as f64,
            c as f64 / w.max(1) as f64
        );
    }

    println!("\n## Memory per replica\n");
    let per_entry = (big_rss.saturating_sub(empty_rss)) as f64 * 1024.0 / entries as f64;
    println!(
        "RSS over an empty table {:.0} MiB; over {entries} entries {:.0} MiB; \
         {per_entry:.0} bytes per entry; {:.2} GiB per million entries",
        empty_rss as f64 / 1024.0,
        big_rss as f64 / 1024.0,
        per_entry * 1e6 / (1u64 << 30) as f64
    );
    println!(
        "of which the vector index (usearch's own count): {:.0} bytes per entry",
        index_bytes / entries as f64
    );
    Ok(())
}

fn main() -> ExitCode {
    // NOTE: `cargo test --all-targets` (make test) runs benches without
    // `--bench`; there this one only proves it compiles.
    if !std::env::args().any(|a| a == "--bench") {
        println!("replicas bench: built; run it with `make bench-replicas`");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("replicas bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replicas bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
