//! Reading a gateway's metrics, and waiting for its write-back.

use std::time::Duration;

use modelcache::app::RunningApp;

use super::{Addrs, Call};

/// `GET /metrics` on the admin listener of `at`: the text.
pub async fn metrics(at: impl Addrs) -> String {
    Call::get("/metrics").send(at.admin_addr()).await.text()
}

/// Sum of a metric's samples whose line contains every `parts`.
pub fn metric_sum(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the write-back queue has stored everything queued so far.
pub async fn settle(app: &RunningApp) {
    // The client may see the last byte just before the tee sees the end.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if let Some(c) = app.cache() {
        c.flush(Duration::from_secs(10)).await;
    }
}
