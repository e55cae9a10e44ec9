//! The routes issue 16 adds (embeddings, Anthropic's Messages, OpenAI's
//! Responses), end to end:
//! hit latency and the overhead on a miss, each quoted against the same run's direct call to the mock with
//! the same request (absolute times drift on a shared machine). It only
//! reports: nothing here asserts on a timing.
//!
//! Run it with `make bench` (or `cargo build --release && cargo bench --bench
//! routes`); the binary is found as for the gateway bench.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use common::{
    client, header_row, llm, metric_sum, mock, overhead, release_bin, row, stats, Binary, Call,
    Got, HttpClient,
};
use serde_json::{json, Value};

/// Batches per phase.
const BATCHES: usize = 200;
/// Inputs per batch.
const INPUTS: usize = 8;
/// Components per vector, as `text-embedding-3-small` gives.
const DIMS: usize = 1536;

fn batch(model: &str, inputs: &[String]) -> Value {
    json!({"model": model, "input": inputs, "dimensions": DIMS})
}

/// Sends `call` to `to`; the answer (a 200, or an error) and the time taken.
async fn timed(client: &HttpClient, call: Call, to: SocketAddr) -> Result<(Got, Duration)> {
    let started = Instant::now();
    let got = call
        .try_send_on(client, to)
        .await
        .map_err(anyhow::Error::msg)?;
    let took = started.elapsed();
    if got.status != 200 {
        bail!("{to} answered {}: {}", got.status, got.text());
    }
    Ok((got, took))
}

async fn written(client: &HttpClient, admin: SocketAddr) -> Result<f64> {
    let got = Call::get("/metrics")
        .try_send_on(client, admin)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(metric_sum(
        &got.text(),
        "modelcache_writeback_total",
        &["outcome=\"written\""],
    ))
}

async fn wait_written(client: &HttpClient, admin: SocketAddr, target: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while written(client, admin).await? < target {
        if Instant::now() > deadline {
            bail!("fewer than {target} entries written within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Gateway and direct latencies of one phase.
type Phase = (Vec<Duration>, Vec<Duration>);

/// The four phases of a chat-like route: `BATCHES` misses, the same as JSON
/// hits and as streamed hits, then new questions streamed (misses). Each
/// gateway call is timed next to a direct call with the same request.
async fn four_phases(
    client: &HttpClient,
    gw: &common::Running,
    direct: SocketAddr,
    call: fn(&Value) -> Call,
    question: impl Fn(usize) -> Value,
) -> Result<[Phase; 4]> {
    let mut lat: [Phase; 4] = Default::default();
    let w = written(client, gw.admin).await?;
    for (phase, stream, want, offset) in [
        (0, false, "miss", 0),
        (1, false, "hit", 0),
        (2, true, "hit", 0),
        (3, true, "miss", BATCHES),
    ] {
        for i in 0..BATCHES {
            let mut b = question(offset + i);
            b["stream"] = json!(stream);
            lat[phase].0.push(timed(client, call(&b), direct).await?.1);
            let (got, t) = timed(client, call(&b), gw.proxy).await?;
            if got.cache() != want {
                bail!("phase {phase}: a request was {}, not {want}", got.cache());
            }
            lat[phase].1.push(t);
        }
        if phase == 0 {
            wait_written(client, gw.admin, w + BATCHES as f64).await?;
        }
    }
    Ok(lat)
}

fn print_phases(route: &str, lat: &[Phase; 4]) {
    let names = ["miss", "hit", "streamed hit", "streamed miss"].map(|n| format!("{route} {n}"));
    println!();
    header_row();
    for (name, (direct, via)) in names.iter().zip(lat) {
        row(&format!("direct to mock: {name}"), &stats(direct));
        row(&format!("gateway: {name}"), &stats(via));
    }
    println!();
    println!("against the direct call (same client, same run)");
    for (name, (direct, via)) in names.iter().zip(lat) {
        overhead(&format!("{name} vs direct"), &stats(via), &stats(direct));
    }
}

async fn bench() -> Result<()> {
    let bin = release_bin().map_err(anyhow::Error::msg)?;
    let up = mock(llm()).await;
    let client = client();
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndrain_timeout = \"5s\"\n[upstream]\nanthropic_url = \"{}\"\n",
            up.url()
        ),
    )?;
    let mut gw = Binary::serve(&config, dir.path())
        .bin(bin)
        .args(&["--upstream", &up.url()])
        .only_defaults()
        .rust_log("info,ort=warn")
        .ready_within(Duration::from_secs(120))
        .start()
        .await;
    println!("modelcache routes benchmark (issue 16)");
    println!(
        "  machine   {} cores available",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  workload  {BATCHES} batches of {INPUTS} inputs, {DIMS}-dim float vectors, one at a time"
    );

    // Warm-up: connections both ways; another model, so nothing here serves.
    for i in 0..50 {
        let b = batch("warm-up", &[format!("warm {i}")]);
        timed(&client, Call::embeddings(&b), up.addr).await?;
        timed(&client, Call::embeddings(&b), gw.proxy).await?;
    }
    let inputs = |round: &str, i: usize| -> Vec<String> {
        (0..INPUTS)
            .map(|k| format!("{round} chunk {i}-{k} of a document"))
            .collect()
    };
    let model = "text-embedding-3-small";
    let w0 = written(&client, gw.admin).await?;

    // Misses, each next to a direct call with the same request.
    let (mut direct_miss, mut miss) = (Vec::new(), Vec::new());
    for i in 0..BATCHES {
        let b = batch(model, &inputs("first", i));
        direct_miss.push(timed(&client, Call::embeddings(&b), up.addr).await?.1);
        let (got, t) = timed(&client, Call::embeddings(&b), gw.proxy).await?;
        if got.cache() != "miss" {
            bail!("a first-time batch was {}", got.cache());
        }
        miss.push(t);
    }
    wait_written(&client, gw.admin, w0 + (BATCHES * INPUTS) as f64).await?;

    // Whole batches from the cache.
    let (mut direct_hit, mut hit) = (Vec::new(), Vec::new());
    for i in 0..BATCHES {
        let b = batch(model, &inputs("first", i));
        direct_hit.push(timed(&client, Call::embeddings(&b), up.addr).await?.1);
        let (got, t) = timed(&client, Call::embeddings(&b), gw.proxy).await?;
        if got.cache() != "hit" {
            bail!("a cached batch was {}", got.cache());
        }
        hit.push(t);
    }

    // Half cached, half new.
    let (mut direct_mixed, mut mixed) = (Vec::new(), Vec::new());
    for i in 0..BATCHES {
        let mut half = inputs("first", i);
        half.truncate(INPUTS / 2);
        half.extend(inputs("second", i).into_iter().take(INPUTS / 2));
        let b = batch(model, &half);
        direct_mixed.push(timed(&client, Call::embeddings(&b), up.addr).await?.1);
        let (got, t) = timed(&client, Call::embeddings(&b), gw.proxy).await?;
        let want = format!("{}/{INPUTS}", INPUTS / 2);
        if got.header("x-modelcache-cached-inputs") != want {
            bail!("a half-cached batch was not served half from the cache");
        }
        mixed.push(t);
    }
    // Messages, then Responses: misses, then hits, JSON and streamed, then
    // streamed misses, each next to a direct call with the same request.
    let messages = four_phases(&client, &gw, up.addr, Call::messages, |i| {
        json!({"model": "claude-bench", "max_tokens": 256,
               "messages": [{"role": "user", "content": format!("Question number {i}: what is it?")}]})
    })
    .await?;
    let responses = four_phases(
        &client,
        &gw,
        up.addr,
        Call::responses,
        |i| json!({"model": "gpt-bench", "input": format!("Question number {i}: what is it?")}),
    )
    .await?;
    let status = gw.terminate().await;

    let (dm, m) = (stats(&direct_miss), stats(&miss));
    let (dh, h) = (stats(&direct_hit), stats(&hit));
    let (dx, x) = (stats(&direct_mixed), stats(&mixed));
    println!();
    header_row();
    row("direct to mock: embeddings (during misses)", &dm);
    row("gateway: embeddings miss", &m);
    row("direct to mock: embeddings (during hits)", &dh);
    row("gateway: embeddings hit (whole batch)", &h);
    row("direct to mock: embeddings (during mixed)", &dx);
    row("gateway: embeddings, half cached", &x);
    println!();
    println!("against the direct call (same client, same run)");
    overhead("embeddings miss vs direct", &m, &dm);
    overhead("embeddings hit vs direct", &h, &dh);
    overhead("embeddings half cached vs direct", &x, &dx);
    print_phases("messages", &messages);
    print_phases("responses", &responses);
    println!();
    println!("gateway stopped: {status}");
    Ok(())
}

fn main() -> ExitCode {
    common::bench_main("routes", bench)
}
