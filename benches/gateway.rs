//! End-to-end benchmark of the `modelcache` gateway.
//!
//! Starts a mock upstream in this process, runs the release binary as a
//! separate process against it (with the real embedding model from
//! `models/`), and prints latency percentiles, throughput and memory. Every
//! gateway figure is printed next to a baseline taken in the same run with the
//! same client calling the mock directly, because absolute times drift on a
//! shared machine. It only reports: nothing here asserts on a timing.
//!
//! Run it with `make bench`, i.e. `cargo build --release && cargo bench --bench
//! gateway`. The binary is `$MODELCACHE_BIN`, else
//! `$CARGO_TARGET_DIR/release/modelcache`, else the `modelcache` next to this
//! bench's own target folder, else `target/release/modelcache`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::ExitCode,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use common::{
    chat_json, client, cpu_time, header_row, metric_sum, mock, ms, overhead, proc_status, question,
    release_bin, row, stat_cpu, stats, Binary, Handler, HttpClient, Reply as MockReply, Running,
    Seen,
};
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// Distinct first-time questions (misses).
const QUESTIONS: usize = 100;
/// Rounds over the questions for exact hits (100 x 10 = 1,000 requests).
const EXACT_ROUNDS: usize = 10;
/// Rounds over the paraphrases; the first one also classifies them.
const SEMANTIC_ROUNDS: usize = 5;
/// Pass-through requests timed one at a time.
const PASS_THROUGH: usize = 1_000;
/// Requests per throughput run.
const THROUGHPUT: usize = 2_000;
/// Requests for the semantic-hit throughput run (each one is embedded).
const SEMANTIC_THROUGHPUT: usize = 500;
/// Concurrency of the parallel throughput runs.
const CONCURRENCY: usize = 16;
/// Longest wait for `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(120);
/// The model name of benchmark requests (part of the cache partition).
const MODEL: &str = "gpt-bench";
/// Warm-up requests use another model, so their entries never serve the benchmark.
const WARMUP_MODEL: &str = "gpt-warmup";

// ---------------------------------------------------------------- mock upstream

/// What the mock upstream answers, at once: a chat answer that names the
/// question (so that a hit can be checked against it), the model list, and
/// 404 for anything else. Counts the chat calls in `chat_calls`.
fn upstream(chat_calls: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |seen: &Seen, _n: usize| {
        let json_reply = |status: u16, body: Value| {
            MockReply::Full(
                status,
                vec![("content-type", "application/json".into())],
                Bytes::from(body.to_string()),
            )
        };
        let path = seen.path_and_query.split('?').next().unwrap_or("");
        match (seen.method.as_str(), path) {
            ("POST", "/v1/chat/completions") => {
                chat_calls.fetch_add(1, Ordering::SeqCst);
                let content = format!("Answer to: {}", question(seen));
                json_reply(200, chat_json(&content, "stop"))
            }
            ("GET", "/v1/models") => json_reply(
                200,
                json!({"object": "list", "data": [
                    {"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "mock"}
                ]}),
            ),
            _ => json_reply(
                404,
                json!({"error": {"message": "no such route", "type": "invalid_request_error"}}),
            ),
        }
    })
}

// ---------------------------------------------------------------- the gateway process

/// Starts `bin` on the defaults against the mock at `upstream`, with its
/// config, data and log in `dir`.
async fn spawn_gateway(bin: &Path, upstream: &str, dir: &Path) -> Result<Running> {
    let config = dir.join("config.toml");
    // Defaults for everything, except a short drain so that the stop is
    // quick, and keyless writes to /modelcache for the insert timings.
    std::fs::write(
        &config,
        "[server]\ndrain_timeout = \"5s\"\n[admin]\nmodelcache_writes_without_key = true\n",
    )?;
    // Only the defaults are measured: no MODELCACHE_* overrides, except those
    // named in BENCH_GATEWAY_ENV ("KEY=VALUE,KEY=VALUE"), which is how a
    // non-default setting is measured on purpose.
    let mut gw = Binary::serve(&config, dir)
        .bin(bin)
        .args(&["--upstream", upstream])
        .only_defaults()
        .rust_log("info,ort=warn")
        .ready_within(READY_WITHIN);
    if let Ok(extra) = std::env::var("BENCH_GATEWAY_ENV") {
        for kv in extra.split(',').filter(|kv| !kv.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .context("BENCH_GATEWAY_ENV wants KEY=VALUE pairs")?;
            println!("gateway setting: {}={}", k.trim(), v.trim());
            gw = gw.env(k.trim(), v.trim());
        }
    }
    Ok(gw.start().await)
}

/// CPU time of a process's threads, summed by thread name.
fn thread_cpu(pid: u32) -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if let Some(t) = stat_cpu(&dir.join("stat")) {
            *out.entry(name.trim().to_string()).or_insert(Duration::ZERO) += t;
        }
    }
    out
}

// ---------------------------------------------------------------- client side

/// One prepared request.
#[derive(Clone)]
struct Target {
    method: Method,
    uri: String,
    body: Option<Bytes>,
}

impl Target {
    fn get(uri: &str) -> Target {
        Target {
            method: Method::GET,
            uri: uri.to_string(),
            body: None,
        }
    }

    fn chat(base: SocketAddr, body: &Bytes) -> Target {
        Target {
            method: Method::POST,
            uri: format!("http://{base}/v1/chat/completions"),
            body: Some(body.clone()),
        }
    }

    fn models(base: SocketAddr) -> Target {
        Target::get(&format!("http://{base}/v1/models"))
    }
}

/// How the gateway says it served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Served {
    Exact,
    Semantic,
    Miss,
    Bypass,
    /// No cache headers: the mock itself answered.
    Direct,
    Other,
}

struct Reply {
    status: u16,
    served: Served,
    similarity: Option<f32>,
    body: Bytes,
    elapsed: Duration,
}

impl Reply {
    fn content(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn served(h: &http::HeaderMap) -> Served {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (x, status) = (get("x-modelcache"), get("cache-status"));
    match x {
        "" => Served::Direct,
        "hit" if status.contains("detail=exact") => Served::Exact,
        "hit" if status.contains("detail=semantic") => Served::Semantic,
        "miss" => Served::Miss,
        "bypass" => Served::Bypass,
        _ => Served::Other,
    }
}

/// Sends one request and reads the whole answer; `elapsed` covers both.
async fn call(client: &HttpClient, t: &Target) -> Result<Reply> {
    let mut b = Request::builder().method(t.method.clone()).uri(&t.uri);
    if t.body.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    let req = b.body(Full::new(t.body.clone().unwrap_or_default()))?;
    let started = Instant::now();
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    let elapsed = started.elapsed();
    let similarity = parts
        .headers
        .get("x-modelcache-similarity")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok(Reply {
        status: parts.status.as_u16(),
        served: served(&parts.headers),
        similarity,
        body,
        elapsed,
    })
}

/// Like [`call`], but a non-200 answer is an error.
async fn call_ok(client: &HttpClient, t: &Target) -> Result<Reply> {
    let r = call(client, t).await?;
    if r.status != 200 {
        bail!(
            "{} {} answered {}: {}",
            t.method,
            t.uri,
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(r)
}

/// Result of a throughput run.
struct Run {
    total: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    served: BTreeMap<Served, usize>,
    gateway_cpu: Option<Duration>,
    /// Gateway CPU time by thread name.
    gateway_threads: BTreeMap<String, Duration>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.total as f64 / self.wall.as_secs_f64()
    }
}

/// Sends `total` requests, cycling through `targets`, from `concurrency` tasks.
async fn run_load(
    client: &HttpClient,
    targets: &[Target],
    concurrency: usize,
    total: usize,
    gateway_pid: Option<u32>,
) -> Result<Run> {
    let targets = Arc::new(targets.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = gateway_pid.and_then(cpu_time);
    let threads0 = gateway_pid.map(thread_cpu).unwrap_or_default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, targets, next) = (client.clone(), targets.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut served = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let r = call_ok(&client, &targets[i % targets.len()]).await?;
                lat.push(r.elapsed);
                served.push(r.served);
            }
            Ok::<_, anyhow::Error>((lat, served))
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut tally = BTreeMap::new();
    for t in tasks {
        let (lat, served) = t.await??;
        latencies.extend(lat);
        for s in served {
            *tally.entry(s).or_insert(0) += 1;
        }
    }
    let wall = started.elapsed();
    let cpu1 = gateway_pid.and_then(cpu_time);
    let mut gateway_threads = gateway_pid.map(thread_cpu).unwrap_or_default();
    for (name, t) in gateway_threads.iter_mut() {
        *t = t.saturating_sub(threads0.get(name).copied().unwrap_or_default());
    }
    gateway_threads.retain(|_, t| !t.is_zero());
    Ok(Run {
        total,
        wall,
        latencies,
        served: tally,
        gateway_cpu: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
        gateway_threads,
    })
}

// ---------------------------------------------------------------- metrics

async fn scrape(client: &HttpClient, admin: SocketAddr) -> Result<String> {
    let r = call_ok(client, &Target::get(&format!("http://{admin}/metrics"))).await?;
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

/// Waits until the write-back has stored `target` entries in all.
async fn wait_written(client: &HttpClient, admin: SocketAddr, target: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(client, admin).await?;
        let written = metric_sum(&m, "modelcache_writeback_total", &["outcome=\"written\""]);
        if written >= target {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {written} of {target} entries were written within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn written(m: &str) -> f64 {
    metric_sum(m, "modelcache_writeback_total", &["outcome=\"written\""])
}

/// Mean of a histogram between two scrapes, in ms (or as is, if `scale` is 1).
fn hist_mean(before: &str, after: &str, name: &str, parts: &[&str], scale: f64) -> String {
    let sum = metric_sum(after, &format!("{name}_sum"), parts)
        - metric_sum(before, &format!("{name}_sum"), parts);
    let count = metric_sum(after, &format!("{name}_count"), parts)
        - metric_sum(before, &format!("{name}_count"), parts);
    if count <= 0.0 {
        "-".into()
    } else {
        format!("{:.3} (n={count})", sum / count * scale)
    }
}

/// What the gateway itself measured between two scrapes.
fn print_breakdown(title: &str, before: &str, after: &str) {
    println!("  gateway-side means during {title}:");
    let rows: [(&str, &str, &[&str], f64); 8] = [
        (
            "request, miss (ms)",
            "modelcache_request_duration_seconds",
            &["route=\"chat\"", "result=\"miss\""],
            1e3,
        ),
        (
            "request, exact hit (ms)",
            "modelcache_request_duration_seconds",
            &["route=\"chat\"", "result=\"hit_exact\""],
            1e3,
        ),
        (
            "request, semantic hit (ms)",
            "modelcache_request_duration_seconds",
            &["route=\"chat\"", "result=\"hit_semantic\""],
            1e3,
        ),
        (
            "request, pass-through (ms)",
            "modelcache_request_duration_seconds",
            &["route=\"other\"", "result=\"bypass\""],
            1e3,
        ),
        (
            "lookup (ms)",
            "modelcache_lookup_duration_seconds",
            &[],
            1e3,
        ),
        (
            "embedding batch (ms)",
            "modelcache_embedding_duration_seconds",
            &[],
            1e3,
        ),
        (
            "embedding batch size",
            "modelcache_embedding_batch_size",
            &[],
            1.0,
        ),
        (
            "upstream headers (ms)",
            "modelcache_upstream_duration_seconds",
            &[],
            1e3,
        ),
    ];
    for (label, name, parts, scale) in rows {
        let v = hist_mean(before, after, name, parts, scale);
        if v != "-" {
            println!("    {label:<28} {v}");
        }
    }
}

// ---------------------------------------------------------------- questions

/// 100 questions from a 10 x 10 Latin square: any two share at most one of
/// verb, object and language, so no two are close enough to match each other.
fn questions() -> Vec<String> {
    let verbs = [
        "sort",
        "reverse",
        "serialize",
        "validate",
        "compress",
        "encrypt",
        "deduplicate",
        "paginate",
        "cache",
        "stream",
    ];
    let nouns = [
        "list of integers",
        "Unicode string",
        "nested JSON document",
        "CSV file with a header row",
        "date and time value",
        "binary search tree",
        "HTTP response body",
        "database query result",
        "PNG image thumbnail",
        "email address",
    ];
    let langs = [
        "Python",
        "Rust",
        "Go",
        "JavaScript",
        "Java",
        "C++",
        "Ruby",
        "Haskell",
        "Kotlin",
        "PHP",
    ];
    let mut out = Vec::with_capacity(QUESTIONS);
    for (a, verb) in verbs.iter().enumerate() {
        for (b, noun) in nouns.iter().enumerate() {
            out.push(format!(
                "How do I {verb} a {noun} in {}?",
                langs[(a + b) % langs.len()]
            ));
        }
    }
    out
}

/// The same question in lower case, without the question mark, with a filler
/// word: a different exact key, the same meaning.
fn paraphrase(q: &str) -> String {
    format!("so {}", q.trim_end_matches('?').to_lowercase())
}

fn chat_body(model: &str, q: &str) -> Bytes {
    Bytes::from(json!({"model": model, "messages": [{"role": "user", "content": q}]}).to_string())
}

// ---------------------------------------------------------------- report

fn throughput_row(label: &str, r: &Run) {
    let s = stats(&r.latencies);
    let cpu = r
        .gateway_cpu
        .map(|c| format!("{:.3}", ms(c) / r.total as f64))
        .unwrap_or_else(|| "-".into());
    let served: Vec<String> = r.served.iter().map(|(k, v)| format!("{k:?}={v}")).collect();
    println!(
        "  {label:<44} {:>9.0} {:>9.3} {:>9.3} {:>11}  {}",
        r.rps(),
        s.p50,
        s.p99,
        cpu,
        served.join(" ")
    );
}

fn tally(replies: &[Served]) -> String {
    let mut t: BTreeMap<Served, usize> = BTreeMap::new();
    for s in replies {
        *t.entry(*s).or_insert(0) += 1;
    }
    let v: Vec<String> = t.iter().map(|(k, v)| format!("{k:?}={v}")).collect();
    v.join(" ")
}

// ---------------------------------------------------------------- the run

async fn bench() -> Result<()> {
    let bin = release_bin().map_err(anyhow::Error::msg)?;
    let client = client();
    let chat_calls = Arc::new(AtomicUsize::new(0));
    let mock = mock(upstream(chat_calls.clone())).await;
    let mock_chat_calls = || chat_calls.load(Ordering::SeqCst);

    println!("modelcache gateway benchmark");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "  machine   {} cores available, {cpu}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  binary    {}", bin.display());
    println!(
        "  upstream  in-process mock on {} (answers at once)",
        mock.addr
    );
    println!(
        "  client    hyper-util legacy HTTP/1.1, keep-alive, one current-thread runtime (mock included)"
    );

    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let started = Instant::now();
    let mut gw = spawn_gateway(&bin, &mock.url(), dir.path()).await?;
    let ready_after = started.elapsed();
    let pid = gw.pid();
    let rss_ready = proc_status(pid, "VmRSS");
    let hwm_ready = proc_status(pid, "VmHWM");
    println!(
        "  gateway   pid {pid}, proxy {}, admin {}, ready after {:.2} s",
        gw.proxy,
        gw.admin,
        ready_after.as_secs_f64()
    );

    let qs = questions();
    let ps: Vec<String> = qs.iter().map(|q| paraphrase(q)).collect();
    let q_bodies: Vec<Bytes> = qs.iter().map(|q| chat_body(MODEL, q)).collect();
    let p_bodies: Vec<Bytes> = ps.iter().map(|p| chat_body(MODEL, p)).collect();
    let direct_chat: Vec<Target> = q_bodies
        .iter()
        .map(|b| Target::chat(mock.addr, b))
        .collect();
    let gw_chat: Vec<Target> = q_bodies.iter().map(|b| Target::chat(gw.proxy, b)).collect();
    let gw_para: Vec<Target> = p_bodies.iter().map(|b| Target::chat(gw.proxy, b)).collect();
    let direct_models = Target::models(mock.addr);
    let gw_models = Target::models(gw.proxy);

    // ---- warm-up: connections, the upstream pool, the model, the index.
    let warm_q: Vec<Target> = qs
        .iter()
        .take(20)
        .map(|q| Target::chat(gw.proxy, &chat_body(WARMUP_MODEL, q)))
        .collect();
    let warm_p: Vec<Target> = ps
        .iter()
        .take(20)
        .map(|p| Target::chat(gw.proxy, &chat_body(WARMUP_MODEL, p)))
        .collect();
    for i in 0..200 {
        call_ok(&client, &direct_chat[i % QUESTIONS]).await?;
        call_ok(&client, &direct_models).await?;
        call_ok(&client, &gw_models).await?;
    }
    let m0 = scrape(&client, gw.admin).await?;
    let mut warm_misses = 0;
    for t in &warm_q {
        if call_ok(&client, t).await?.served == Served::Miss {
            warm_misses += 1;
        }
    }
    wait_written(&client, gw.admin, written(&m0) + warm_misses as f64).await?;
    for _ in 0..5 {
        for t in warm_q.iter().chain(&warm_p) {
            call_ok(&client, t).await?;
        }
    }
    let m_warm = scrape(&client, gw.admin).await?;

    // ---- misses, each one next to a direct call with the same request.
    let mut direct_chat_lat = Vec::new();
    let mut miss_lat = Vec::new();
    let mut first_served = Vec::new();
    for i in 0..QUESTIONS {
        direct_chat_lat.push(call_ok(&client, &direct_chat[i]).await?.elapsed);
        let before = mock_chat_calls();
        let r = call_ok(&client, &gw_chat[i]).await?;
        first_served.push(r.served);
        if r.served == Served::Miss && mock_chat_calls() == before + 1 {
            miss_lat.push(r.elapsed);
        }
    }
    let misses = first_served.iter().filter(|s| **s == Served::Miss).count();
    // Pass-through, interleaved the same way.
    let mut direct_models_lat = Vec::new();
    let mut pass_lat = Vec::new();
    let mut pass_served = Vec::new();
    for _ in 0..PASS_THROUGH {
        direct_models_lat.push(call_ok(&client, &direct_models).await?.elapsed);
        let r = call_ok(&client, &gw_models).await?;
        pass_served.push(r.served);
        pass_lat.push(r.elapsed);
    }
    wait_written(&client, gw.admin, written(&m_warm) + misses as f64).await?;
    let m_miss = scrape(&client, gw.admin).await?;

    // ---- exact hits: the same 100 questions, 10 rounds.
    let mut exact_lat = Vec::new();
    let mut exact_served = Vec::new();
    let mut direct_hit_lat = Vec::new();
    let calls_before = mock_chat_calls();
    for _ in 0..EXACT_ROUNDS {
        for i in 0..QUESTIONS {
            let r = call_ok(&client, &gw_chat[i]).await?;
            exact_served.push(r.served);
            if r.served == Served::Exact {
                exact_lat.push(r.elapsed);
            }
            direct_hit_lat.push(call_ok(&client, &direct_chat[i]).await?.elapsed);
        }
    }
    // Every direct call reached the mock; any other call did not come from a hit.
    let exact_upstream = mock_chat_calls() - calls_before - EXACT_ROUNDS * QUESTIONS;
    let m_exact = scrape(&client, gw.admin).await?;

    // ---- semantic hits: the paraphrases, 5 rounds.
    let mut sem_lat = Vec::new();
    let mut sem_sims = Vec::new();
    let mut sem_served = Vec::new();
    let mut sem_first = 0;
    let mut sem_wrong = 0;
    let mut sem_hitting = Vec::new();
    let mut later_misses = 0;
    for round in 0..SEMANTIC_ROUNDS {
        for i in 0..QUESTIONS {
            let r = call_ok(&client, &gw_para[i]).await?;
            sem_served.push(r.served);
            if r.served == Served::Semantic {
                // The answer must be the one stored for the original question.
                if r.content() != format!("Answer to: {}", qs[i]) {
                    sem_wrong += 1;
                    continue;
                }
                if round == 0 {
                    sem_first += 1;
                    sem_hitting.push(gw_para[i].clone());
                }
                sem_lat.push(r.elapsed);
                sem_sims.extend(r.similarity);
            } else if r.served == Served::Miss {
                later_misses += 1;
            }
        }
        if round == 0 && later_misses > 0 {
            // Missed paraphrases are stored and come back as exact hits later.
            wait_written(&client, gw.admin, written(&m_exact) + later_misses as f64).await?;
        }
    }
    let m_sem = scrape(&client, gw.admin).await?;

    // ---- the ModelCache API: queries next to proxied requests for the same
    // paraphrases, and inserts one item per call against bulk calls.
    let mc = |body: Value| Target {
        method: Method::POST,
        uri: format!("http://{}/modelcache", gw.admin),
        body: Some(Bytes::from(body.to_string())),
    };
    let mut mc_query_lat = Vec::new();
    let mut mc_proxy_lat = Vec::new();
    for i in 0..QUESTIONS {
        let r = call_ok(&client, &gw_para[i]).await?;
        let q = call_ok(
            &client,
            &mc(json!({"type": "query", "scope": {"model": MODEL},
                       "query": [{"role": "user", "content": ps[i]}]})),
        )
        .await?;
        let v: Value = serde_json::from_slice(&q.body).unwrap_or(Value::Null);
        if v["cacheHit"] == true && matches!(r.served, Served::Semantic | Served::Exact) {
            mc_query_lat.push(q.elapsed);
            mc_proxy_lat.push(r.elapsed);
        }
    }
    let item = |k: usize, i: usize| {
        json!({"query": [{"role": "user", "content": format!("{} (set {k})", qs[i % QUESTIONS])}],
               "answer": format!("Answer to set {k} question {i}")})
    };
    let single_started = Instant::now();
    for i in 0..QUESTIONS {
        call_ok(
            &client,
            &mc(json!({"type": "insert", "scope": {"model": "gpt-bench-api"}, "chat_info": [item(0, i)]})),
        )
        .await?;
    }
    let single_elapsed = single_started.elapsed();
    let bulk_started = Instant::now();
    for k in 1..=5 {
        let items: Vec<Value> = (0..QUESTIONS).map(|i| item(k, i)).collect();
        call_ok(
            &client,
            &mc(json!({"type": "insert", "scope": {"model": "gpt-bench-api"}, "chat_info": items})),
        )
        .await?;
    }
    let bulk_elapsed = bulk_started.elapsed();

    // ---- throughput.
    let exact_c1 = run_load(&client, &gw_chat, 1, THROUGHPUT, Some(pid)).await?;
    let exact_c16 = run_load(&client, &gw_chat, CONCURRENCY, THROUGHPUT, Some(pid)).await?;
    let direct_c16 = run_load(&client, &direct_chat, CONCURRENCY, THROUGHPUT, None).await?;
    let pass_c16 = run_load(
        &client,
        std::slice::from_ref(&gw_models),
        CONCURRENCY,
        THROUGHPUT,
        Some(pid),
    )
    .await?;
    let direct_models_c16 = run_load(
        &client,
        std::slice::from_ref(&direct_models),
        CONCURRENCY,
        THROUGHPUT,
        None,
    )
    .await?;
    let m_load0 = scrape(&client, gw.admin).await?;
    let sem_c16 = if sem_hitting.is_empty() {
        None
    } else {
        Some(
            run_load(
                &client,
                &sem_hitting,
                CONCURRENCY,
                SEMANTIC_THROUGHPUT,
                Some(pid),
            )
            .await?,
        )
    };
    let m_load1 = scrape(&client, gw.admin).await?;

    // ---- memory, then stop.
    let hwm = proc_status(pid, "VmHWM");
    let rss = proc_status(pid, "VmRSS");
    let threads = proc_status(pid, "Threads");
    let total_cpu = cpu_time(pid);
    drop(client);
    let status = gw.terminate().await;

    // ---- report.
    let direct_chat_s = stats(&direct_chat_lat);
    let miss_s = stats(&miss_lat);
    let direct_models_s = stats(&direct_models_lat);
    let pass_s = stats(&pass_lat);
    let exact_s = stats(&exact_lat);
    let direct_hit_s = stats(&direct_hit_lat);
    let sem_s = stats(&sem_lat);

    println!();
    println!("checks");
    println!(
        "  first-time questions: {} (want Miss={QUESTIONS})",
        tally(&first_served)
    );
    println!(
        "  exact rounds: {} (want Exact={}); upstream calls during them: {exact_upstream}",
        tally(&exact_served),
        EXACT_ROUNDS * QUESTIONS
    );
    println!(
        "  semantic probes hitting semantically on the first try: {sem_first}/{QUESTIONS}; \
         all rounds: {}; semantic hits with the wrong answer: {sem_wrong}",
        tally(&sem_served)
    );
    if !sem_sims.is_empty() {
        let min = sem_sims.iter().copied().fold(f32::INFINITY, f32::min);
        let mean = sem_sims.iter().sum::<f32>() / sem_sims.len() as f32;
        println!("  similarity of semantic hits: min {min:.4}, mean {mean:.4} (threshold 0.90)");
    }
    println!("  pass-through: {}", tally(&pass_served));

    println!();
    header_row();
    row("direct to mock: POST chat (baseline)", &direct_chat_s);
    row("gateway: chat miss (first time)", &miss_s);
    row(
        "direct to mock: GET /v1/models (baseline)",
        &direct_models_s,
    );
    row("gateway: GET /v1/models (pass-through)", &pass_s);
    row("direct to mock: POST chat, during hits", &direct_hit_s);
    row("gateway: exact hit", &exact_s);
    row("gateway: semantic hit", &sem_s);
    println!();
    println!("overhead against the direct baseline (same client, same run)");
    overhead("chat miss vs direct chat", &miss_s, &direct_chat_s);
    overhead("pass-through vs direct GET", &pass_s, &direct_models_s);
    overhead(
        "exact hit vs direct chat (no upstream)",
        &exact_s,
        &direct_hit_s,
    );
    overhead("semantic hit vs direct chat", &sem_s, &direct_hit_s);

    println!();
    println!(
        "  {:<44} {:>9} {:>9} {:>9} {:>11}  outcomes",
        "throughput", "req/s", "p50 ms", "p99 ms", "gw CPU ms/req"
    );
    throughput_row(
        &format!("gateway exact hits, c=1 ({THROUGHPUT})"),
        &exact_c1,
    );
    throughput_row(
        &format!("gateway exact hits, c={CONCURRENCY} ({THROUGHPUT})"),
        &exact_c16,
    );
    throughput_row(
        &format!("direct to mock chat, c={CONCURRENCY} ({THROUGHPUT})"),
        &direct_c16,
    );
    throughput_row(
        &format!("gateway pass-through, c={CONCURRENCY} ({THROUGHPUT})"),
        &pass_c16,
    );
    throughput_row(
        &format!("direct to mock GET, c={CONCURRENCY} ({THROUGHPUT})"),
        &direct_models_c16,
    );
    if let Some(r) = &sem_c16 {
        throughput_row(
            &format!("gateway semantic hits, c={CONCURRENCY} ({SEMANTIC_THROUGHPUT})"),
            r,
        );
    }

    println!();
    println!("gateway CPU per request by thread (us; /proc ticks, so coarse)");
    let runs: [(&str, Option<&Run>); 4] = [
        ("exact hits, c=1", Some(&exact_c1)),
        ("exact hits, c=16", Some(&exact_c16)),
        ("pass-through, c=16", Some(&pass_c16)),
        ("semantic hits, c=16", sem_c16.as_ref()),
    ];
    for (label, r) in runs {
        let Some(r) = r else { continue };
        let parts: Vec<String> = r
            .gateway_threads
            .iter()
            .map(|(name, t)| format!("{name}={:.1}", t.as_secs_f64() * 1e6 / r.total as f64))
            .collect();
        println!("  {label:<22} {}", parts.join("  "));
    }

    println!();
    println!("ModelCache API (POST /modelcache on the admin listener)");
    header_row();
    let mcq = stats(&mc_query_lat);
    let mcp = stats(&mc_proxy_lat);
    row("query, paraphrase hit", &mcq);
    row("proxy, same paraphrases", &mcp);
    println!(
        "  query / proxy p50: {:.2}x (same {} paraphrases, interleaved)",
        mcq.p50 / mcp.p50,
        mcq.n
    );
    let per_s = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let single = per_s(QUESTIONS, single_elapsed);
    let bulk = per_s(5 * QUESTIONS, bulk_elapsed);
    println!("  insert, 1 item per call      {single:>8.0} items/s ({QUESTIONS} calls)");
    println!("  insert, 100 items per call   {bulk:>8.0} items/s (5 calls; embedded in batches)");
    println!("  bulk / single: {:.2}x", bulk / single);

    println!();
    let mb = |kb: Option<u64>| kb.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!("memory of the gateway process");
    println!(
        "  RSS when ready        {}  (peak so far {})",
        mb(rss_ready),
        mb(hwm_ready)
    );
    println!(
        "  RSS at the end        {}  (about {} entries stored)",
        mb(rss),
        written(&m_load1)
    );
    println!("  peak RSS (VmHWM)      {}", mb(hwm));
    println!(
        "  threads               {}",
        threads.map_or("-".into(), |t| t.to_string())
    );
    println!(
        "  total CPU             {}",
        total_cpu.map_or("-".into(), |c| format!("{:.2} s", c.as_secs_f64()))
    );

    println!();
    println!("where the time goes (the gateway's own histograms)");
    print_breakdown("the warm-up", &m0, &m_warm);
    print_breakdown("the misses and pass-through", &m_warm, &m_miss);
    print_breakdown("the exact hits", &m_miss, &m_exact);
    print_breakdown("the semantic hits", &m_exact, &m_sem);
    if sem_c16.is_some() {
        print_breakdown(
            &format!("semantic hits at c={CONCURRENCY}"),
            &m_load0,
            &m_load1,
        );
    }

    println!();
    println!("gateway stopped: {status}");
    Ok(())
}

fn main() -> ExitCode {
    common::bench_main("gateway", bench)
}
