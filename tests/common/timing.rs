//! Latency summaries for the benches: nearest-rank percentiles, and the rows
//! that print a figure next to its same-run baseline.

use std::{future::Future, process::ExitCode, time::Duration};

/// Latency summary in milliseconds.
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentiles.
pub fn stats(samples: &[Duration]) -> Stats {
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let rank = |p: f64| -> f64 {
        if n == 0 {
            return f64::NAN;
        }
        let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        v[i]
    };
    Stats {
        n,
        p50: rank(0.50),
        p99: rank(0.99),
        mean: if n == 0 {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / n as f64
        },
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// One latency row.
pub fn row(label: &str, s: &Stats) {
    println!(
        "  {label:<44} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        s.n, s.p50, s.p99, s.mean, s.max
    );
}

/// The header of latency rows.
pub fn header_row() {
    println!(
        "  {:<44} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "n", "p50", "p99", "mean", "max"
    );
}

/// A figure against its same-run baseline: difference and ratio.
pub fn overhead(label: &str, via: &Stats, direct: &Stats) {
    println!(
        "  {label:<44} p50 {:+.3} ms ({:.1}x)   p99 {:+.3} ms ({:.1}x)",
        via.p50 - direct.p50,
        via.p50 / direct.p50,
        via.p99 - direct.p99,
        via.p99 / direct.p99
    );
}

/// A bench's `main`: runs `bench` on a current-thread runtime when cargo
/// runs it as a bench. `cargo test --all-targets` (make test) builds and runs
/// benches too, without `--bench`; there it only proves it compiles.
pub fn bench_main<F>(name: &str, bench: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name} bench: built; run it with `make bench` (cargo bench --bench {name})");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name} bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
