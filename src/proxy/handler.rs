//! The request path: route, read, key, look up, serve or forward, tee, write.
//!
//! Owns the order of the phases in DESIGN.md §1, one method each. A request
//! that is not cacheable, or that the cache cannot help, is forwarded as it
//! came. It must never fail a request because of the cache, and never answer
//! with its own error unless the gateway itself failed.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;

use super::{
    body::{boxed, full, BoxError, IdleTimeout, ProxyBody},
    replay,
    sse::storable_answer,
    tee::Tee,
    upstream::{strip_hop_by_hop, Upstream},
};
use crate::{
    cache::{now_ms, Cache, Hit, HitKind, LookupOptions},
    config::Settings,
    error::GatewayError,
    keying::{key_for, CacheKey, Endpoint},
    metrics::Metrics,
    store::NewEntry,
};

/// The only tenant until tenants come from the config.
pub const DEFAULT_TENANT: &str = "default";

/// What happened to a request, for headers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the exact layer.
    HitExact,
    /// Served from the semantic layer.
    HitSemantic,
    /// Looked up, not found, forwarded.
    Miss,
    /// Forwarded without a lookup (`no-cache`), still written.
    Refresh,
    /// Not cacheable, or the cache was skipped: forwarded untouched.
    Bypass,
    /// The gateway failed.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::HitExact => "hit_exact",
            Outcome::HitSemantic => "hit_semantic",
            Outcome::Miss | Outcome::Refresh => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Error => "error",
        }
    }

    fn header(self) -> &'static str {
        match self {
            Outcome::HitExact | Outcome::HitSemantic => "hit",
            Outcome::Miss | Outcome::Refresh => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Error => "error",
        }
    }

    fn cache_status(self) -> &'static str {
        // RFC 9211
        match self {
            Outcome::HitExact => "modelcache; hit; detail=exact",
            Outcome::HitSemantic => "modelcache; hit; detail=semantic",
            Outcome::Miss => "modelcache; fwd=uri-miss",
            Outcome::Refresh => "modelcache; fwd=request",
            Outcome::Bypass => "modelcache; fwd=bypass",
            Outcome::Error => "modelcache; fwd=bypass; detail=error",
        }
    }
}

/// `Cache-Control` directives a client may send.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheControl {
    /// Neither read nor write.
    pub no_store: bool,
    /// Skip the lookup, still write.
    pub no_cache: bool,
    /// Reject entries older than this.
    pub max_age: Option<Duration>,
}

impl CacheControl {
    /// Parses every `Cache-Control` header.
    pub fn parse(h: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for v in h.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for d in v.split(',') {
                let d = d.trim().to_ascii_lowercase();
                if d == "no-store" {
                    cc.no_store = true;
                } else if d == "no-cache" {
                    cc.no_cache = true;
                } else if let Some(n) = d.strip_prefix("max-age=") {
                    if let Ok(n) = n.trim_matches('"').parse::<u64>() {
                        cc.max_age = Some(Duration::from_secs(n));
                    }
                }
            }
        }
        cc
    }
}

/// The proxy service.
pub struct Gateway {
    settings: Arc<Settings>,
    upstream: Upstream,
    cache: Arc<OnceLock<Arc<Cache>>>,
    metrics: Arc<Metrics>,
}

enum BodyRead {
    All(Bytes),
    Over(Bytes, Incoming),
}

fn header_f32(h: &HeaderMap, name: &str) -> Option<f32> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Gateway {
    /// A gateway forwarding to `upstream`; the cache arrives once it is loaded.
    pub fn new(
        settings: Arc<Settings>,
        upstream: Upstream,
        cache: Arc<OnceLock<Arc<Cache>>>,
        metrics: Arc<Metrics>,
    ) -> Gateway {
        Gateway {
            settings,
            upstream,
            cache,
            metrics,
        }
    }

    /// Handles one request. Never fails: errors become OpenAI-shaped responses.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let endpoint = if req.method() == Method::POST {
            Endpoint::from_path(req.uri().path())
        } else {
            None
        };
        let route = endpoint.map_or("other", Endpoint::as_str);
        let (mut resp, outcome) = match self.serve(endpoint, req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "request failed");
                (e.to_response(), Outcome::Error)
            }
        };
        let h = resp.headers_mut();
        h.insert("x-modelcache", HeaderValue::from_static(outcome.header()));
        h.insert(
            "cache-status",
            HeaderValue::from_static(outcome.cache_status()),
        );
        self.metrics
            .requests
            .with_label_values(&[DEFAULT_TENANT, route, outcome.label()])
            .inc();
        self.metrics
            .request_seconds
            .with_label_values(&[route, outcome.label()])
            .observe(started.elapsed().as_secs_f64());
        resp
    }

    async fn serve(
        &self,
        endpoint: Option<Endpoint>,
        req: Request<Incoming>,
    ) -> Result<(Response<ProxyBody>, Outcome), GatewayError> {
        let cc = CacheControl::parse(req.headers());
        let cache = self
            .cache
            .get()
            .filter(|_| self.settings.cache.enabled && !cc.no_store);
        let (Some(endpoint), Some(cache)) = (endpoint, cache) else {
            return self.pass_through(req).await;
        };
        let max = self.settings.server.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return self.pass_through(req).await;
        }
        let (parts, body) = req.into_parts();
        let bytes = match read_bounded(body, max).await? {
            BodyRead::All(b) => b,
            BodyRead::Over(prefix, rest) => {
                // NOTE: too large to key; forward what was read, then the rest.
                let chained = stream::iter([Ok::<_, BoxError>(Frame::data(prefix))]).chain(
                    rest.into_data_stream()
                        .map(|r| r.map(Frame::data).map_err(BoxError::from)),
                );
                let body = StreamBody::new(chained).boxed_unsync();
                return Ok((self.forward(&parts, body, None).await?, Outcome::Bypass));
            }
        };
        let key = serde_json::from_slice(&bytes)
            .ok()
            .and_then(|v| key_for(endpoint, &v).ok());
        let Some(key) = key else {
            // Malformed JSON or an uncacheable shape: the upstream decides.
            return Ok((
                self.forward(&parts, full(bytes), None).await?,
                Outcome::Bypass,
            ));
        };
        let opts = LookupOptions {
            max_age: cc.max_age,
            min_similarity: header_f32(&parts.headers, "x-modelcache-threshold"),
        };
        let mut embedding = None;
        if !cc.no_cache {
            let found = cache.lookup(DEFAULT_TENANT, &key, &opts).await;
            if let Some(hit) = found.hit {
                // NOTE: None when the entry cannot be replayed faithfully (no
                // usage stored, usage asked for): forwarded, and the fresh
                // answer replaces the entry.
                if let Some(resp) = self.hit_response(&key, &hit) {
                    cache.record_hit(DEFAULT_TENANT, &hit, &key.text);
                    let outcome = match hit.kind {
                        HitKind::Exact => Outcome::HitExact,
                        HitKind::Semantic => Outcome::HitSemantic,
                    };
                    return Ok((resp, outcome));
                }
            }
            embedding = found.embedding;
        }
        let ttl = parts
            .headers
            .get("x-modelcache-ttl")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .map_or(cache.settings().ttl, |t| t.min(cache.settings().ttl));
        let write = PendingWrite {
            cache: cache.clone(),
            key,
            embedding,
            ttl,
        };
        let resp = self.forward(&parts, full(bytes), Some(write)).await?;
        Ok((
            resp,
            if cc.no_cache {
                Outcome::Refresh
            } else {
                Outcome::Miss
            },
        ))
    }

    async fn pass_through(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Response<ProxyBody>, Outcome), GatewayError> {
        let (parts, body) = req.into_parts();
        Ok((
            self.forward(&parts, boxed(body), None).await?,
            Outcome::Bypass,
        ))
    }

    /// Sends the request upstream and streams the answer back, teeing it into
    /// `write` when the answer is a 200.
    async fn forward(
        &self,
        parts: &http::request::Parts,
        body: ProxyBody,
        write: Option<PendingWrite>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let t0 = Instant::now();
        let resp = self.upstream.send(parts, body).await?;
        self.metrics
            .upstream_seconds
            .observe(t0.elapsed().as_secs_f64());
        let status = resp.status();
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.metrics
            .upstream_responses
            .with_label_values(&[class])
            .inc();
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        let body = IdleTimeout::new(rbody, self.settings.upstream.idle_timeout);
        let body = match write {
            Some(w) if status == StatusCode::OK => {
                let ct = rparts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let ce = rparts
                    .headers
                    .get(header::CONTENT_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let cap = self.settings.server.max_answer_bytes;
                let on_complete = Box::new(move |copy: Bytes| {
                    // NOTE: off the response path; the client already has every byte.
                    w.cache.begin_write();
                    tokio::spawn(async move {
                        let cache = w.cache.clone();
                        w.finish(ct, ce, copy, cap).await;
                        cache.end_write();
                    });
                });
                boxed(Tee::new(boxed(body), cap, on_complete))
            }
            _ => boxed(body),
        };
        Ok(Response::from_parts(rparts, body))
    }

    fn hit_response(&self, key: &CacheKey, hit: &Hit) -> Option<Response<ProxyBody>> {
        let mut resp = if key.stream {
            let events = replay::sse_events(key.endpoint, &hit.entry.answer, key.include_usage)?;
            let frames = stream::iter(
                events
                    .into_iter()
                    .map(|b| Ok::<_, BoxError>(Frame::data(b))),
            );
            let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        } else {
            let body = replay::json_body(key.endpoint, &hit.entry.answer)?;
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("{:.4}", hit.similarity)) {
            h.insert("x-modelcache-similarity", v);
        }
        if let Ok(v) = HeaderValue::from_str(&hit.entry.id.to_string()) {
            h.insert("x-modelcache-entry", v);
        }
        let age = ((now_ms() - hit.entry.created_at).max(0) / 1000).to_string();
        if let Ok(v) = HeaderValue::from_str(&age) {
            h.insert(header::AGE, v);
        }
        Some(resp)
    }
}

/// A miss waiting for its answer.
struct PendingWrite {
    cache: Arc<Cache>,
    key: CacheKey,
    embedding: Option<Vec<f32>>,
    ttl: Duration,
}

impl PendingWrite {
    async fn finish(self, ct: Option<String>, ce: Option<String>, copy: Bytes, cap: usize) {
        let metrics = &self.cache.core().metrics;
        let answer = match storable_answer(
            self.key.endpoint,
            ct.as_deref(),
            ce.as_deref(),
            &copy,
            cap,
            &self.cache.settings().cacheable_finish_reasons,
        ) {
            Ok(a) => a,
            Err(reason) => {
                tracing::debug!(%reason, "answer not cached");
                metrics.writeback.with_label_values(&["rejected"]).inc();
                return;
            }
        };
        let embedding = match (self.key.semantic, self.embedding) {
            (true, None) => self.cache.embed(&self.key.embed_text).await,
            (true, e) => e,
            (false, _) => None,
        };
        let now = now_ms();
        self.cache.write(NewEntry {
            tenant: DEFAULT_TENANT.to_string(),
            exact_hash: self.key.exact_hash,
            partition: self.key.partition,
            endpoint: self.key.endpoint.as_str().to_string(),
            model: self.key.model,
            text: self.key.text,
            params: self.key.params,
            answer: answer.to_string(),
            embedding,
            created_at: now,
            expires_at: now.saturating_add(self.ttl.as_millis() as i64),
        });
    }
}

async fn read_bounded(mut body: Incoming, max: usize) -> Result<BodyRead, GatewayError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| GatewayError::BadRequestBody(e.to_string()))?;
        if let Some(d) = frame.data_ref() {
            buf.extend_from_slice(d);
            if buf.len() > max {
                return Ok(BodyRead::Over(buf.freeze(), body));
            }
        }
    }
    Ok(BodyRead::All(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("No-Cache, max-age=60"),
        );
        let cc = CacheControl::parse(&h);
        assert!(cc.no_cache && !cc.no_store);
        assert_eq!(cc.max_age, Some(Duration::from_secs(60)));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(CacheControl::parse(&h).no_store);
    }
}
