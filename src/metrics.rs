//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Owns every metric's name, help text and buckets. Labels are bounded: tenant
//! names come from the config, routes and results from fixed lists. It must
//! never take a label value from a request.

use prometheus::{
    exponential_buckets, CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Routes, as labelled.
pub const ROUTES: [&str; 6] = [
    "chat",
    "completions",
    "embeddings",
    "messages",
    "responses",
    "other",
];
/// Request results, as labelled.
pub const RESULTS: [&str; 5] = ["hit_exact", "hit_semantic", "miss", "bypass", "error"];
/// A cache stage that can fail: the `stage` label of
/// `modelcache_cache_errors_total`, so that the label set is bounded by this
/// type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStage {
    /// Embedding a text.
    Embed,
    /// Reading the store on the request path (or the change log).
    StoreRead,
    /// Searching a vector index.
    Ann,
    /// Opening (loading or rebuilding) a tenant's vector index.
    IndexOpen,
    /// Adding or removing vectors of an index.
    IndexAdd,
    /// Saving an index snapshot.
    IndexSave,
    /// Writing the hit log and hit counts.
    RecordHits,
    /// Sweeping expired and over-cap entries.
    Sweep,
    /// Removing entries.
    Remove,
    /// Recording or revoking a verified key.
    VerifiedKey,
}

impl CacheStage {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheStage::Embed => "embed",
            CacheStage::StoreRead => "store_read",
            CacheStage::Ann => "ann",
            CacheStage::IndexOpen => "index_open",
            CacheStage::IndexAdd => "index_add",
            CacheStage::IndexSave => "index_save",
            CacheStage::RecordHits => "record_hits",
            CacheStage::Sweep => "sweep",
            CacheStage::Remove => "remove",
            CacheStage::VerifiedKey => "verified_key",
        }
    }
}

/// Stages of `modelcache_cache_errors_total` exported at zero from the start
/// (`verified_key` appears on its first failure).
pub const CACHE_ERROR_STAGES: [CacheStage; 10] = [
    CacheStage::Embed,
    CacheStage::StoreRead,
    CacheStage::Ann,
    CacheStage::IndexOpen,
    CacheStage::IndexAdd,
    CacheStage::IndexSave,
    CacheStage::RecordHits,
    CacheStage::Sweep,
    CacheStage::Remove,
    CacheStage::VerifiedKey,
];
/// The model label of a model the price table does not name.
pub const OTHER_MODEL: &str = "other";

/// Since-start figures of one tenant.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct TenantFigures {
    /// Requests served from cache.
    pub hits: u64,
    /// Requests looked up and forwarded.
    pub misses: u64,
    /// Requests forwarded without a lookup.
    pub bypassed: u64,
    /// Requests that failed or were rejected.
    pub errors: u64,
    /// Prompt tokens served from cache.
    pub saved_prompt_tokens: u64,
    /// Completion tokens served from cache.
    pub saved_completion_tokens: u64,
    /// Estimated USD saved.
    pub saved_usd: f64,
}

impl TenantFigures {
    /// Hits over hits and misses; `None` before any lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let looked_up = self.hits + self.misses;
        (looked_up > 0).then(|| self.hits as f64 / looked_up as f64)
    }
}

/// All of the gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by tenant, route and result.
    pub requests: IntCounterVec,
    /// Key checks by tenant and outcome: `unverified` or `rejected`.
    pub auth: IntCounterVec,
    /// Requests forwarded without a cache read or write, by tenant and why.
    pub bypass: IntCounterVec,
    /// Lookups that missed, by each check their nearest candidate failed.
    pub refused: IntCounterVec,
    /// Time to the first body byte of SSE responses, by result.
    pub stream_first_byte_seconds: HistogramVec,
    /// Whole-request latency (to response headers) by route and result.
    pub request_seconds: HistogramVec,
    /// Cache lookup latency (exact plus semantic).
    pub lookup_seconds: Histogram,
    /// Embedding batch latency.
    pub embed_seconds: Histogram,
    /// Pair-model runs, by outcome: scored, timeout, busy, error.
    pub pair_runs: IntCounterVec,
    /// Pair-model latency (scored runs).
    pub pair_seconds: Histogram,
    /// Texts per embedding batch.
    pub embed_batch_size: Histogram,
    /// Vector search latency.
    pub ann_seconds: Histogram,
    /// Upstream latency to response headers.
    pub upstream_seconds: Histogram,
    /// Best similarity found on each semantic lookup, by tenant and hit/miss.
    pub similarity: HistogramVec,
    /// Write-back outcomes: written, dropped, failed, rejected.
    pub writeback: IntCounterVec,
    /// Writes dropped because the queue was full.
    pub writeback_dropped: IntCounter,
    /// Write-back queue depth.
    pub writeback_queue_depth: IntGauge,
    /// Entries whose write failed, waiting for the store to return.
    pub writeback_deferred: IntGauge,
    /// Entries per tenant.
    pub entries: IntGaugeVec,
    /// Vector index memory per tenant.
    pub index_bytes: IntGaugeVec,
    /// Index writes waiting for a shared index (Milvus).
    pub index_pending: IntGauge,
    /// Tokens served from cache, by tenant and kind (prompt, completion).
    pub saved_tokens: IntCounterVec,
    /// Estimated USD saved, by tenant and priced model.
    pub saved_usd: CounterVec,
    /// Cache-side failures (never request failures) by stage.
    pub cache_errors: IntCounterVec,
    /// Upstream responses by status class.
    pub upstream_responses: IntCounterVec,
    /// Feedback on served hits, by tenant and verdict (correct, wrong).
    pub feedback: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    // 100 µs to about 14 minutes: covers an exact hit and a slow stream alike.
    exponential_buckets(0.0001, 2.0, 24).unwrap_or_default()
}

impl Metrics {
    /// Counts a cache-side failure at `stage`.
    pub fn cache_error(&self, stage: CacheStage) {
        self.cache_errors.with_label_values(&[stage.as_str()]).inc();
    }

    /// Counts a pair-model run by its outcome (`scored`, `timeout`, `busy`,
    /// `error`), and a scored run's latency.
    pub fn pair_model(&self, outcome: &str, took: std::time::Duration) {
        if outcome == "scored" {
            self.pair_seconds.observe(took.as_secs_f64());
        }
        self.pair_runs.with_label_values(&[outcome]).inc();
    }

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
        let auth = IntCounterVec::new(
            Opts::new(
                "modelcache_auth_total",
                "Requests whose key was not served from cache: unverified (forwarded until the upstream accepts it) or rejected (matches no tenant).",
            ),
            &["tenant", "outcome"],
        )?;
        let bypass = IntCounterVec::new(
            Opts::new(
                "modelcache_bypass_total",
                "Requests forwarded without a cache read or write, by why: route, unknown_caller, cache_off, no_store, not_loaded, body_too_large, not_json, bad_namespace, too_hot, or a request that cannot be keyed (not_an_object, no_model, bad_messages, prompt_not_string).",
            ),
            &["tenant", "reason"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "modelcache_refused_total",
                "Lookups that missed with a candidate in the request's partition, by each check the nearest one failed: similarity, a guard (numbers, negation, direction, code, language, order, long_text), unseen_text (spans the embedding model cannot see differ), turn (a turn on its own), turn_count, pair_model (its score), pair_model_timeout, pair_model_busy, pair_model_error (no score: a miss), feedback, fresh, max_age, origin.",
            ),
            &["tenant", "check"],
        )?;
        let stream_first_byte_seconds = HistogramVec::new(
            HistogramOpts::new(
                "modelcache_stream_first_byte_seconds",
                "Time from request to the first body byte of a streamed (SSE) response, by result.",
            )
            .buckets(latency_buckets()),
            &["result"],
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
        let pair_runs = IntCounterVec::new(
            Opts::new(
                "modelcache_pair_model_total",
                "Runs of the verifier's pair model on a candidate, by outcome: scored, or timeout, busy, error (each a miss).",
            ),
            &["outcome"],
        )?;
        let pair_seconds = h(
            "modelcache_pair_model_duration_seconds",
            "Latency of one scored pair-model run.",
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
        let similarity = HistogramVec::new(
            HistogramOpts::new(
                "modelcache_similarity",
                "Best cosine similarity found on each lookup that reached the semantic layer, by tenant and result (hit or miss).",
            )
            // NOTE: i / 50 rather than 0.02 * i, so that every `le` label is a
            // clean decimal (0.7, not 0.7000000000000001).
            .buckets((0..=50).map(|i| f64::from(i) / 50.0).collect()),
            &["tenant", "result"],
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
        let writeback_deferred = IntGauge::new(
            "modelcache_writeback_deferred",
            "Entries whose write failed (the store is away), waiting in memory to be written when it returns.",
        )?;
        let entries = IntGaugeVec::new(
            Opts::new("modelcache_entries", "Cache entries per tenant."),
            &["tenant"],
        )?;
        let index_bytes = IntGaugeVec::new(
            Opts::new(
                "modelcache_index_bytes",
                "Memory used by the vector index, per tenant.",
            ),
            &["tenant"],
        )?;
        let index_pending = IntGauge::new(
            "modelcache_index_pending",
            "Vector index writes waiting for Milvus (0 with the in-memory index).",
        )?;
        let saved_tokens = IntCounterVec::new(
            Opts::new(
                "modelcache_saved_tokens_total",
                "Tokens served from cache instead of the upstream, by tenant and kind.",
            ),
            &["tenant", "kind"],
        )?;
        let saved_usd = CounterVec::new(
            Opts::new(
                "modelcache_saved_usd_total",
                "Estimated USD saved by hits, from the price table; model is a price-table key or `other`.",
            ),
            &["tenant", "model"],
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
        let feedback = IntCounterVec::new(
            Opts::new(
                "modelcache_feedback_total",
                "Feedback on served hits (POST /admin/feedback), by tenant and verdict: correct, or wrong (the entry stops answering that neighbourhood).",
            ),
            &["tenant", "verdict"],
        )?;
        registry.register(Box::new(feedback.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(auth.clone()))?;
        registry.register(Box::new(bypass.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(stream_first_byte_seconds.clone()))?;
        registry.register(Box::new(index_bytes.clone()))?;
        registry.register(Box::new(index_pending.clone()))?;
        registry.register(Box::new(saved_tokens.clone()))?;
        registry.register(Box::new(saved_usd.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(lookup_seconds.clone()))?;
        registry.register(Box::new(embed_seconds.clone()))?;
        registry.register(Box::new(pair_runs.clone()))?;
        registry.register(Box::new(pair_seconds.clone()))?;
        for outcome in ["scored", "timeout", "busy", "error"] {
            pair_runs.with_label_values(&[outcome]);
        }
        registry.register(Box::new(embed_batch_size.clone()))?;
        registry.register(Box::new(ann_seconds.clone()))?;
        registry.register(Box::new(upstream_seconds.clone()))?;
        registry.register(Box::new(similarity.clone()))?;
        registry.register(Box::new(writeback.clone()))?;
        registry.register(Box::new(writeback_dropped.clone()))?;
        registry.register(Box::new(writeback_queue_depth.clone()))?;
        registry.register(Box::new(writeback_deferred.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(cache_errors.clone()))?;
        registry.register(Box::new(upstream_responses.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for outcome in ["written", "dropped", "failed", "rejected"] {
            writeback.with_label_values(&[outcome]);
        }
        for stage in CACHE_ERROR_STAGES {
            cache_errors.with_label_values(&[stage.as_str()]);
        }
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            upstream_responses.with_label_values(&[class]);
        }
        for result in RESULTS {
            stream_first_byte_seconds.with_label_values(&[result]);
            for route in ROUTES {
                request_seconds.with_label_values(&[route, result]);
            }
        }
        Ok(Metrics {
            registry,
            requests,
            auth,
            bypass,
            refused,
            stream_first_byte_seconds,
            index_bytes,
            index_pending,
            saved_tokens,
            saved_usd,
            request_seconds,
            lookup_seconds,
            embed_seconds,
            pair_runs,
            pair_seconds,
            embed_batch_size,
            ann_seconds,
            upstream_seconds,
            similarity,
            writeback,
            writeback_dropped,
            writeback_queue_depth,
            writeback_deferred,
            entries,
            cache_errors,
            upstream_responses,
            feedback,
        })
    }

    /// Creates the bypass series of `tenant` for every one of `reasons`
    /// (the proxy's skip reasons; this module names none of its own).
    pub fn init_bypass(&self, tenant: &str, reasons: &[&str]) {
        for reason in reasons {
            self.bypass.with_label_values(&[tenant, reason]);
        }
    }

    /// Creates every series of `tenant` at zero, so that rates and ratios
    /// over them are defined from the start and dashboards show 0, not "no
    /// data". `models` are the price table's keys.
    pub fn init_tenant(&self, tenant: &str, models: &[String]) {
        for route in ROUTES {
            for result in RESULTS {
                self.requests.with_label_values(&[tenant, route, result]);
            }
        }
        for outcome in ["unverified", "rejected"] {
            self.auth.with_label_values(&[tenant, outcome]);
        }
        for kind in ["prompt", "completion"] {
            self.saved_tokens.with_label_values(&[tenant, kind]);
        }
        for model in models.iter().map(String::as_str).chain([OTHER_MODEL]) {
            self.saved_usd.with_label_values(&[tenant, model]);
        }
        for result in ["hit", "miss"] {
            self.similarity.with_label_values(&[tenant, result]);
        }
        for verdict in ["correct", "wrong"] {
            self.feedback.with_label_values(&[tenant, verdict]);
        }
        self.entries.with_label_values(&[tenant]);
        self.index_bytes.with_label_values(&[tenant]);
    }

    /// What `tenant` has been served since the process started, for the
    /// admin API. Reads the series without creating any.
    pub fn tenant_figures(&self, tenant: &str) -> TenantFigures {
        use prometheus::core::Collector;
        let mut f = TenantFigures::default();
        let of_tenant = |m: &prometheus::proto::Metric| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "tenant" && l.value() == tenant)
        };
        let label = |m: &prometheus::proto::Metric, name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_string())
                .unwrap_or_default()
        };
        for mf in self.requests.collect() {
            for m in mf.get_metric().iter().filter(|m| of_tenant(m)) {
                let n = m.get_counter().get_value() as u64;
                match label(m, "result").as_str() {
                    "hit_exact" | "hit_semantic" => f.hits += n,
                    "miss" => f.misses += n,
                    "bypass" => f.bypassed += n,
                    _ => f.errors += n,
                }
            }
        }
        for mf in self.saved_tokens.collect() {
            for m in mf.get_metric().iter().filter(|m| of_tenant(m)) {
                let n = m.get_counter().get_value() as u64;
                match label(m, "kind").as_str() {
                    "prompt" => f.saved_prompt_tokens += n,
                    _ => f.saved_completion_tokens += n,
                }
            }
        }
        for mf in self.saved_usd.collect() {
            for m in mf.get_metric().iter().filter(|m| of_tenant(m)) {
                f.saved_usd += m.get_counter().get_value();
            }
        }
        f
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
