//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Owns every metric's name, help text and buckets. Labels are bounded: tenant
//! names come from the config, routes and results from fixed lists. It must
//! never take a label value from a request.

use prometheus::{
    exponential_buckets, linear_buckets, Encoder, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All of the gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by tenant, route and result.
    pub requests: IntCounterVec,
    /// Whole-request latency (to response headers) by route and result.
    pub request_seconds: HistogramVec,
    /// Cache lookup latency (exact plus semantic).
    pub lookup_seconds: Histogram,
    /// Embedding batch latency.
    pub embed_seconds: Histogram,
    /// Texts per embedding batch.
    pub embed_batch_size: Histogram,
    /// Vector search latency.
    pub ann_seconds: Histogram,
    /// Upstream latency to response headers.
    pub upstream_seconds: Histogram,
    /// Best similarity found on each semantic lookup.
    pub similarity: Histogram,
    /// Write-back outcomes: written, dropped, failed, rejected.
    pub writeback: IntCounterVec,
    /// Writes dropped because the queue was full.
    pub writeback_dropped: IntCounter,
    /// Write-back queue depth.
    pub writeback_queue_depth: IntGauge,
    /// Entries per tenant.
    pub entries: IntGaugeVec,
    /// Cache-side failures (never request failures) by stage.
    pub cache_errors: IntCounterVec,
    /// Upstream responses by status class.
    pub upstream_responses: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 20).unwrap_or_default()
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "modelcache_requests_total",
                "Requests by tenant, route and result.",
            ),
            &["tenant", "route", "result"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "modelcache_request_duration_seconds",
                "Time from request to response headers, by route and result.",
            )
            .buckets(latency_buckets()),
            &["route", "result"],
        )?;
        let h = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        let lookup_seconds = h(
            "modelcache_lookup_duration_seconds",
            "Cache lookup latency, exact and semantic layers together.",
            latency_buckets(),
        )?;
        let embed_seconds = h(
            "modelcache_embedding_duration_seconds",
            "Latency of one embedding batch.",
            latency_buckets(),
        )?;
        let embed_batch_size = h(
            "modelcache_embedding_batch_size",
            "Texts per embedding batch.",
            exponential_buckets(1.0, 2.0, 8)?,
        )?;
        let ann_seconds = h(
            "modelcache_ann_duration_seconds",
            "Vector index search latency.",
            latency_buckets(),
        )?;
        let upstream_seconds = h(
            "modelcache_upstream_duration_seconds",
            "Upstream latency to response headers.",
            latency_buckets(),
        )?;
        let similarity = h(
            "modelcache_similarity",
            "Best cosine similarity found on each semantic lookup, hit or miss.",
            linear_buckets(0.0, 0.02, 51)?,
        )?;
        let writeback = IntCounterVec::new(
            Opts::new("modelcache_writeback_total", "Write-back outcomes."),
            &["outcome"],
        )?;
        let writeback_dropped = IntCounter::new(
            "modelcache_writeback_dropped_total",
            "Writes dropped because the write-back queue was full.",
        )?;
        let writeback_queue_depth = IntGauge::new(
            "modelcache_writeback_queue_depth",
            "Writes waiting in the write-back queue.",
        )?;
        let entries = IntGaugeVec::new(
            Opts::new("modelcache_entries", "Cache entries per tenant."),
            &["tenant"],
        )?;
        let cache_errors = IntCounterVec::new(
            Opts::new(
                "modelcache_cache_errors_total",
                "Cache failures that were logged and bypassed, by stage.",
            ),
            &["stage"],
        )?;
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                "modelcache_upstream_responses_total",
                "Upstream responses by status class.",
            ),
            &["class"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(lookup_seconds.clone()))?;
        registry.register(Box::new(embed_seconds.clone()))?;
        registry.register(Box::new(embed_batch_size.clone()))?;
        registry.register(Box::new(ann_seconds.clone()))?;
        registry.register(Box::new(upstream_seconds.clone()))?;
        registry.register(Box::new(similarity.clone()))?;
        registry.register(Box::new(writeback.clone()))?;
        registry.register(Box::new(writeback_dropped.clone()))?;
        registry.register(Box::new(writeback_queue_depth.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(cache_errors.clone()))?;
        registry.register(Box::new(upstream_responses.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            requests,
            request_seconds,
            lookup_seconds,
            embed_seconds,
            embed_batch_size,
            ann_seconds,
            upstream_seconds,
            similarity,
            writeback,
            writeback_dropped,
            writeback_queue_depth,
            entries,
            cache_errors,
            upstream_responses,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
