//! The request path: route, read, key, look up, serve or forward, tee, write.
//!
//! Owns the order of the phases in DESIGN.md §1, one method each. A request
//! that is not cacheable, or that the cache cannot help, is forwarded as it
//! came. It must never fail a request because of the cache, and never answer
//! with its own error unless the gateway itself failed.

use std::{
    sync::{Arc, OnceLock, RwLock},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures_util::{future::join_all, stream, FutureExt, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{
    embeddings,
    flight::{FlightGuard, Flights, Joined},
    replay, responses,
    sse::storable_answer,
    tee::Tee,
};
use crate::{
    cache::{
        plan::{self, Facts, Plan, SkipReason},
        writeback::RemoveTarget,
        Cache, Hit, HitKind, LookupOptions, Scope,
    },
    clock::now_ms,
    config::{ServerSettings, UnknownKeys},
    http::error::GatewayError,
    http::{
        body::{
            boxed, full, BoxError, FirstByte, FlushBeforeError, IdleTimeout, Peeked, ProxyBody,
        },
        upstream::{is_anthropic, strip_hop_by_hop, Upstream},
    },
    keying::{inputs, CacheKey, Endpoint},
    metrics::{Metrics, OTHER_MODEL},
    tenants::{caller_hash, Tenant, TenantSet, VerifiedKeys},
};

/// How many bytes of minted Responses answers each gateway process holds.
const MINTED_BYTES: u64 = 64 << 20;

/// The metrics label of callers that match no tenant (tenant names cannot
/// start with `_`).
pub const UNKNOWN_TENANT: &str = "_unknown";

/// What happened to a request, for headers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the exact layer.
    HitExact,
    /// Served from the semantic layer.
    HitSemantic,
    /// Served the answer of an identical miss that was in flight.
    HitCoalesced,
    /// Looked up, not found, forwarded.
    Miss,
    /// Forwarded without a lookup (`no-cache`), still written.
    Refresh,
    /// Not cacheable, or the cache was skipped: forwarded untouched.
    Bypass(SkipReason),
    /// The caller's key has no recent upstream success: forwarded, still written.
    Unverified,
    /// The caller matches no tenant and unknown keys are rejected.
    Rejected,
    /// The gateway failed.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            // NOTE: an identical request, answered without the upstream.
            Outcome::HitExact | Outcome::HitCoalesced => "hit_exact",
            Outcome::HitSemantic => "hit_semantic",
            // NOTE: the five results of the metrics; why a key was not served
            // from cache is counted apart, in modelcache_auth_total.
            Outcome::Miss | Outcome::Refresh | Outcome::Unverified => "miss",
            Outcome::Bypass(_) => "bypass",
            Outcome::Rejected | Outcome::Error => "error",
        }
    }

    fn auth_label(self) -> Option<&'static str> {
        match self {
            Outcome::Unverified => Some("unverified"),
            Outcome::Rejected => Some("rejected"),
            _ => None,
        }
    }

    fn header(self) -> &'static str {
        match self {
            Outcome::HitExact | Outcome::HitSemantic | Outcome::HitCoalesced => "hit",
            Outcome::Miss | Outcome::Refresh | Outcome::Unverified => "miss",
            Outcome::Bypass(_) => "bypass",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
        }
    }

    fn cache_status(self) -> &'static str {
        // RFC 9211
        match self {
            Outcome::HitExact => "modelcache; hit; detail=exact",
            Outcome::HitSemantic => "modelcache; hit; detail=semantic",
            Outcome::HitCoalesced => "modelcache; hit; detail=coalesced",
            Outcome::Miss => "modelcache; fwd=uri-miss",
            Outcome::Refresh => "modelcache; fwd=request",
            Outcome::Bypass(_) => "modelcache; fwd=bypass",
            Outcome::Unverified => "modelcache; fwd=request; detail=unverified-key",
            Outcome::Rejected => "modelcache; detail=unknown-key",
            Outcome::Error => "modelcache; fwd=bypass; detail=error",
        }
    }
}

/// The proxy service.
pub struct Gateway {
    server: ServerSettings,
    tenants: Arc<RwLock<Arc<TenantSet>>>,
    verified: VerifiedKeys,
    cache: Arc<OnceLock<Arc<Cache>>>,
    metrics: Arc<Metrics>,
    flights: Flights,
    /// The Responses ids minted for hits, so that clients can chain onto them.
    minted: responses::Minted,
    single_flight_wait: Duration,
}

enum BodyRead {
    All(Bytes),
    Over(Bytes, Incoming),
}

/// Whom an upstream answer verifies or refuses.
struct Verify {
    tenant: Arc<Tenant>,
    caller: [u8; 32],
}

impl Gateway {
    /// A gateway routing by `tenants`; the cache arrives once it is loaded.
    pub fn new(
        server: ServerSettings,
        tenants: Arc<RwLock<Arc<TenantSet>>>,
        cache: Arc<OnceLock<Arc<Cache>>>,
        metrics: Arc<Metrics>,
        single_flight_wait: Duration,
    ) -> Gateway {
        Gateway {
            server,
            tenants,
            verified: VerifiedKeys::default(),
            cache,
            metrics,
            flights: Flights::default(),
            minted: responses::Minted::new(MINTED_BYTES),
            single_flight_wait,
        }
    }

    /// Whether the upstream accepted `caller` for `tenant` within `ttl`: in
    /// this process's memory, or else as the store remembers it (a restart,
    /// or another replica, saw the acceptance).
    async fn key_verified(
        &self,
        cache: &Cache,
        tenant: &str,
        caller: &[u8; 32],
        ttl: Duration,
    ) -> bool {
        let now = now_ms();
        if self.verified.is_verified(tenant, caller, ttl, now) {
            return true;
        }
        match cache.verified_key_at(tenant, caller).await {
            Some(at) if crate::tenants::fresh(at, ttl, now) => {
                self.verified.verify(tenant, caller, at);
                true
            }
            _ => false,
        }
    }

    fn snapshot(&self) -> Arc<TenantSet> {
        match self.tenants.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Handles one request. Never fails: errors become responses in the
    /// shape of the API called (OpenAI's, or Anthropic's).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let endpoint = if req.method() == Method::POST {
            Endpoint::from_path(req.uri().path())
        } else {
            None
        };
        let route = endpoint.map_or("other", Endpoint::as_str);
        let anthropic = is_anthropic(req.uri().path(), req.headers());
        let mut who = None;
        let (mut resp, outcome) = match self.serve(endpoint, req, &mut who).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "request failed");
                (e.to_response_as(anthropic), Outcome::Error)
            }
        };
        let h = resp.headers_mut();
        h.insert("x-modelcache", HeaderValue::from_static(outcome.header()));
        h.insert(
            "cache-status",
            HeaderValue::from_static(outcome.cache_status()),
        );
        let tenant = who.as_ref().map_or(UNKNOWN_TENANT, |t| t.name());
        self.metrics
            .requests
            .with_label_values(&[tenant, route, outcome.label()])
            .inc();
        if let Outcome::Bypass(reason) = outcome {
            self.metrics
                .bypass
                .with_label_values(&[tenant, reason.as_str()])
                .inc();
        }
        if let Some(a) = outcome.auth_label() {
            self.metrics.auth.with_label_values(&[tenant, a]).inc();
        }
        self.metrics
            .request_seconds
            .with_label_values(&[route, outcome.label()])
            .observe(started.elapsed().as_secs_f64());
        let streamed = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if streamed {
            let h = self
                .metrics
                .stream_first_byte_seconds
                .with_label_values(&[outcome.label()]);
            let (parts, body) = resp.into_parts();
            let body = FirstByte::new(
                body,
                Box::new(move || h.observe(started.elapsed().as_secs_f64())),
            );
            resp = Response::from_parts(parts, boxed(body));
        }
        resp
    }

    /// Counts the tokens (and money, by the price table) a hit saved.
    fn count_savings(&self, set: &TenantSet, tenant: &str, key: &CacheKey, answer: &str) {
        #[derive(serde::Deserialize)]
        struct Usage {
            // NOTE: a Messages answer counts `input_tokens` and `output_tokens`.
            #[serde(default, alias = "input_tokens")]
            prompt_tokens: u64,
            #[serde(default, alias = "output_tokens")]
            completion_tokens: u64,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            usage: Option<Usage>,
        }
        let Some(u) = serde_json::from_str::<Answer>(answer)
            .ok()
            .and_then(|a| a.usage)
        else {
            return;
        };
        let m = &self.metrics;
        m.saved_tokens
            .with_label_values(&[tenant, "prompt"])
            .inc_by(u.prompt_tokens);
        m.saved_tokens
            .with_label_values(&[tenant, "completion"])
            .inc_by(u.completion_tokens);
        let (label, usd) = match set.prices.price_for(&key.model) {
            Some(p) => (
                p.pattern.as_str(),
                (u.prompt_tokens as f64 * p.prompt + u.completion_tokens as f64 * p.completion)
                    / 1e6,
            ),
            None => (OTHER_MODEL, 0.0),
        };
        m.saved_usd.with_label_values(&[tenant, label]).inc_by(usd);
    }

    async fn serve(
        &self,
        endpoint: Option<Endpoint>,
        req: Request<Incoming>,
        who: &mut Option<Arc<Tenant>>,
    ) -> Result<(Response<ProxyBody>, Outcome), GatewayError> {
        let set = self.snapshot();
        let caller = caller_hash(req.headers());
        let known = set.by_key_or_header(req.headers(), &caller);
        let (mut parts, body) = req.into_parts();

        // The body of a cacheable request is read (bounded) to key it and to
        // match model patterns; anything else streams through.
        let max = self.server.max_body_bytes;
        let declared_over = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max as u64);
        // NOTE: a client that stalls part way through its body is cut off
        // after `body_read_timeout` of silence, whether its body is read here
        // or streamed through.
        let stall = self.server.body_read_timeout;
        let (bytes, streamed): (Option<Bytes>, Option<ProxyBody>) = match endpoint {
            Some(_) if !declared_over => match read_bounded(body, max, stall).await? {
                BodyRead::All(b) => (Some(b), None),
                BodyRead::Over(prefix, rest) => {
                    // NOTE: too large to key; forward what was read, then the rest.
                    let chained = stream::iter([Ok::<_, BoxError>(Frame::data(prefix))]).chain(
                        IdleTimeout::new(rest, stall)
                            .into_data_stream()
                            .map(|r| r.map(Frame::data)),
                    );
                    (None, Some(StreamBody::new(chained).boxed_unsync()))
                }
            },
            _ => (None, Some(boxed(IdleTimeout::new(body, stall)))),
        };
        let mut bytes = bytes;
        let mut parsed: Option<Value> = bytes.as_ref().and_then(|b| serde_json::from_slice(b).ok());
        let tenant = known
            .or_else(|| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get("model"))
                    .and_then(Value::as_str)
                    .and_then(|m| set.by_model(m))
            })
            .or_else(|| set.catch_all());
        let body = match (&bytes, streamed) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => full(Bytes::new()),
        };
        let Some(tenant) = tenant else {
            // NOTE: never a cache read or write for a caller that is no tenant's.
            return match set.unknown_keys {
                UnknownKeys::Reject => {
                    let anthropic = is_anthropic(parts.uri.path(), &parts.headers);
                    Ok((
                        GatewayError::UnknownKey.to_response_as(anthropic),
                        Outcome::Rejected,
                    ))
                }
                UnknownKeys::Passthrough => Ok((
                    self.forward(set.fallback_for(&parts), &parts, body, None, None)
                        .await?,
                    Outcome::Bypass(SkipReason::UnknownCaller),
                )),
            };
        };
        *who = Some(tenant.clone());
        let mut body = body;
        if let Some(served) = self
            .minted_response(&parts, &tenant, &caller, set.verified_key_ttl)
            .await
        {
            return Ok(served);
        }
        // NOTE: a request chained onto a response this gateway minted goes
        // upstream written out in full, for the upstream has never seen it.
        if let (Some(Endpoint::Responses), Some(v)) = (endpoint, &parsed) {
            if let Some(id) = v
                .get("previous_response_id")
                .and_then(Value::as_str)
                .filter(|id| id.starts_with(responses::MINTED_PREFIX))
            {
                let Some(served) = self.find_minted(&tenant, id).await else {
                    return Ok((
                        GatewayError::NotHeld(id.to_string()).to_response(),
                        Outcome::Error,
                    ));
                };
                if let Some(full_body) = responses::chained(v, &served) {
                    let b = Bytes::from(full_body.to_string());
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                    body = full(b.clone());
                    bytes = Some(b);
                    parsed = Some(full_body);
                }
            }
        }
        // Only answers on the cacheable routes prove a key: an upstream may
        // well serve other paths without authentication.
        let verify = endpoint.map(|_| Verify {
            tenant: tenant.clone(),
            caller,
        });
        let policy = tenant.policy();
        let read = match (&parsed, &bytes) {
            (Some(v), _) => plan::Body::Json(v),
            (None, Some(_)) => plan::Body::NotJson,
            (None, None) => plan::Body::TooLarge,
        };
        let facts = Facts::from_http(endpoint, &parts.headers, parts.uri.query(), read);
        let cache = self.cache.get();
        let planned = match (plan::plan(Some(policy), cache.is_some(), &facts), cache) {
            (Plan::Lookup(l), Some(c)) => Ok((*l, c)),
            (Plan::Lookup(_), None) => Err(SkipReason::NotLoaded),
            (Plan::Skip(reason), _) => Err(reason),
        };
        let (lookup, cache) = match planned {
            Ok(p) => p,
            Err(reason) => {
                // Not cacheable, malformed, or the cache is skipped: the upstream decides.
                tracing::debug!(reason = reason.as_str(), "bypassing the cache");
                return Ok((
                    self.forward(tenant.upstream_for(&parts), &parts, body, None, verify)
                        .await?,
                    Outcome::Bypass(reason),
                ));
            }
        };
        let plan::Lookup {
            key,
            api_key,
            options,
            reads,
            write,
        } = lookup;
        let verified = self
            .key_verified(cache, tenant.name(), &caller, set.verified_key_ttl)
            .await;
        let forwarded = if !reads {
            Outcome::Refresh
        } else if !verified {
            Outcome::Unverified
        } else {
            Outcome::Miss
        };
        if let (Endpoint::Embeddings, Some(body), Some(original)) =
            (key.endpoint, parsed.as_ref(), bytes.as_ref())
        {
            let batch = EmbeddingsBatch {
                tenant: &tenant,
                cache,
                parts: &parts,
                original,
                body,
                whole: &key,
                options: &options,
                look: reads && verified,
                write,
            };
            return self.embeddings(batch, verify, forwarded).await;
        }
        let mint = parsed.as_ref().map(|b| Mint {
            tenant: tenant.name(),
            body: b,
            ttl: policy.ttl,
        });
        let mut embedding = None;
        if reads && verified {
            let found = cache.lookup(tenant.name(), &key, &options).await;
            let mut hit = found.hit;
            if let (None, Some(alt)) = (&hit, &api_key) {
                let probe = Scope::api_entries(found.embedding.clone());
                hit = cache
                    .lookup_with(tenant.name(), alt, &options, probe)
                    .await
                    .hit;
            }
            if let Some(hit) = hit {
                // NOTE: None when the entry cannot be replayed faithfully (no
                // usage stored, usage asked for): forwarded, and the fresh
                // answer replaces the entry.
                if let Some(mut resp) = self.hit_response(&key, &hit, mint) {
                    let request_id = crate::clock::new_request_id();
                    if let Ok(v) = HeaderValue::from_str(&request_id) {
                        resp.headers_mut().insert("x-modelcache-request-id", v);
                    }
                    cache.record_hit(tenant.name(), &hit, &key.text, &request_id);
                    self.count_savings(&set, tenant.name(), &key, &hit.entry.answer);
                    let outcome = match hit.kind {
                        HitKind::Exact => Outcome::HitExact,
                        HitKind::Semantic => Outcome::HitSemantic,
                    };
                    return Ok((resp, outcome));
                }
            }
            embedding = found.embedding;
        }
        // NOTE: an identical miss already on its way upstream answers this
        // one too (single flight). Only a request that may read the cache
        // follows; one that may write leads, so that its answer is shared.
        let mut flight = None;
        if write.is_some() && !self.single_flight_wait.is_zero() {
            match self.flights.join(tenant.name(), &key.exact_hash) {
                Joined::Leader(guard) => flight = Some(guard),
                Joined::Follower(f) if reads && verified => {
                    if let Some(answer) = f.answer(self.single_flight_wait).await {
                        if let Some(resp) = self.answer_response(&key, &answer, mint) {
                            self.count_savings(&set, tenant.name(), &key, &answer);
                            return Ok((resp, Outcome::HitCoalesced));
                        }
                    }
                }
                Joined::Follower(_) => {}
            }
        }
        let write = write.map(|ttl| PendingWrite {
            cache: cache.clone(),
            tenant: tenant.clone(),
            key,
            embedding,
            ttl,
            flight,
        });
        let resp = self
            .forward(tenant.upstream_for(&parts), &parts, body, write, verify)
            .await?;
        Ok((resp, forwarded))
    }

    /// An embeddings request: each input looked up exactly; only the inputs
    /// the cache lacks go upstream, and the answer has every vector at its
    /// input's index. A request whose every input misses goes upstream as
    /// it came, and its answer back as it came.
    async fn embeddings(
        &self,
        b: EmbeddingsBatch<'_>,
        verify: Option<Verify>,
        forwarded: Outcome,
    ) -> Result<(Response<ProxyBody>, Outcome), GatewayError> {
        let tenant = b.tenant.name();
        let Ok(inputs) = inputs::of(b.body.get("input")) else {
            let body = full(b.original.clone());
            let resp = self
                .forward(b.tenant.upstream_for(b.parts), b.parts, body, None, verify)
                .await?;
            return Ok((resp, forwarded));
        };
        let batch = embeddings::Batch::of(inputs);
        let keys: Vec<CacheKey> = batch
            .unique
            .iter()
            .map(|i| inputs::key(b.whole, i))
            .collect();
        let mut found: Vec<Option<(embeddings::Vector, Value, Hit)>> = vec![None; keys.len()];
        if b.look {
            for (keys, slots) in keys.chunks(16).zip(found.chunks_mut(16)) {
                let mut looked = Vec::with_capacity(keys.len());
                for k in keys {
                    looked.push(b.cache.lookup(tenant, k, b.options));
                }
                for (slot, l) in slots.iter_mut().zip(join_all(looked).await) {
                    *slot = l.hit.and_then(|h| {
                        embeddings::Vector::from_stored(&h.entry.answer).map(|(v, m)| (v, m, h))
                    });
                }
            }
        }
        let base64 = embeddings::wants_base64(b.body);
        let cached = batch.at.iter().filter(|u| found[**u].is_some()).count();
        let tally = format!("{cached}/{}", batch.at.len());
        let missing: Vec<usize> = (0..keys.len()).filter(|u| found[*u].is_none()).collect();

        if missing.is_empty() {
            let mut vectors = Vec::with_capacity(batch.at.len());
            for u in &batch.at {
                if let Some((v, _, _)) = &found[*u] {
                    vectors.push(v);
                }
            }
            let model = found
                .iter()
                .flatten()
                .map(|(_, m, _)| m.clone())
                .next()
                .unwrap_or(Value::Null);
            let out = embeddings::merged(&model, &vectors, base64, embeddings::no_usage());
            let request_id = crate::clock::new_request_id();
            for (k, f) in keys.iter().zip(&found) {
                if let Some((_, _, h)) = f {
                    b.cache.record_hit(tenant, h, &k.text, &request_id);
                }
            }
            let mut resp = json_response(out);
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                h.insert("x-modelcache-request-id", v);
            }
            if let Ok(v) = HeaderValue::from_str(&tally) {
                h.insert("x-modelcache-cached-inputs", v);
            }
            return Ok((resp, Outcome::HitExact));
        }

        let asked: Vec<&inputs::Input> = missing.iter().map(|u| &batch.unique[*u]).collect();
        let cap = self.server.max_answer_bytes;
        let dims = found.iter().flatten().map(|(v, _, _)| v.len()).max();
        // NOTE: every input missed, or the answer to the missing ones might
        // not fit in max_answer_bytes to be merged: the upstream gets the
        // request as the client wrote it, and the client the upstream's bytes.
        let untouched = missing.len() == keys.len()
            || dims.is_some_and(|d| embeddings::answer_bound(asked.len(), d, base64) > cap);
        let (parts, body) = if untouched {
            (clone_parts(b.parts), b.original.clone())
        } else {
            let Some(body) = embeddings::request_for(b.body, &asked) else {
                return Err(GatewayError::UpstreamShape(
                    "the batch could not be rewritten".into(),
                ));
            };
            let mut parts = clone_parts(b.parts);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            // NOTE: the answer is merged here, so it is asked for unencoded.
            parts.headers.remove(header::ACCEPT_ENCODING);
            (parts, body)
        };
        let resp = self
            .forward(
                b.tenant.upstream_for(&parts),
                &parts,
                full(body),
                None,
                verify,
            )
            .await?;
        let (mut rparts, mut rbody) = resp.into_parts();
        if let Ok(v) = HeaderValue::from_str(&tally) {
            rparts.headers.insert("x-modelcache-cached-inputs", v);
        }
        let encoding = rparts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if untouched {
            // NOTE: the answer goes to the client as it comes, like a chat
            // miss; its copy is read and stored once it has ended cleanly.
            let body = match b.write {
                Some(ttl) if rparts.status == StatusCode::OK => {
                    // Each input that missed, at its first position.
                    let mut first: Vec<Option<usize>> = vec![None; keys.len()];
                    for (p, u) in batch.at.iter().enumerate() {
                        if found[*u].is_none() {
                            first[*u].get_or_insert(p);
                        }
                    }
                    let rows: Vec<(CacheKey, usize)> = keys
                        .into_iter()
                        .zip(first)
                        .filter_map(|(k, p)| p.map(|p| (k, p)))
                        .collect();
                    let expected = batch.at.len();
                    let (cache, tenant) = (b.cache.clone(), b.tenant.clone());
                    let on_complete = Box::new(move |copy: Bytes| {
                        cache.begin_write();
                        tokio::spawn(async move {
                            let answer = super::sse::decode(encoding.as_deref(), &copy, cap)
                                .map_err(|_| "an encoding that does not decode")
                                .and_then(|raw| embeddings::read_answer(&raw, expected));
                            match answer {
                                Ok(a) => {
                                    for (k, p) in rows {
                                        if let Some(v) = a.vectors.get(p) {
                                            let row = v.stored(&a.model);
                                            cache
                                                .store_answer(tenant.name(), &k, row, None, ttl)
                                                .await;
                                        }
                                    }
                                }
                                Err(why) => {
                                    tracing::debug!(why, "embeddings answer not cached");
                                    cache.count_refused();
                                }
                            }
                            cache.end_write();
                        });
                    });
                    boxed(Tee::new(rbody, cap, on_complete))
                }
                _ => rbody,
            };
            return Ok((Response::from_parts(rparts, body), forwarded));
        }
        // The new part of a mixed batch: read whole (within
        // max_answer_bytes, which the estimate above kept it under) to merge.
        let mut buf = BytesMut::new();
        while let Some(frame) = rbody.frame().await {
            let frame = frame.map_err(|e| GatewayError::UpstreamBody(e.to_string()))?;
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
            }
            if buf.len() > cap {
                return Err(GatewayError::UpstreamShape(format!(
                    "the answer to the uncached inputs is over max_answer_bytes ({cap})"
                )));
            }
        }
        let got = buf.freeze();
        if rparts.status != StatusCode::OK {
            return Ok((Response::from_parts(rparts, full(got)), Outcome::Miss));
        }
        let answer = super::sse::decode(encoding.as_deref(), &got, cap)
            .map_err(|_| "an encoding that does not decode")
            .and_then(|raw| embeddings::read_answer(&raw, asked.len()))
            .map_err(|why| {
                GatewayError::UpstreamShape(format!(
                    "the upstream answered the uncached inputs with {why}"
                ))
            })?;
        let mut fresh: Vec<Option<&embeddings::Vector>> = vec![None; keys.len()];
        for (u, v) in missing.iter().zip(&answer.vectors) {
            fresh[*u] = Some(v);
        }
        if let Some(ttl) = b.write {
            let rows: Vec<(CacheKey, String)> = keys
                .iter()
                .zip(&fresh)
                .filter_map(|(k, v)| v.map(|v| (k.clone(), v.stored(&answer.model))))
                .collect();
            let (cache, tenant) = (b.cache.clone(), b.tenant.clone());
            cache.begin_write();
            tokio::spawn(async move {
                for (k, row) in rows {
                    cache.store_answer(tenant.name(), &k, row, None, ttl).await;
                }
                cache.end_write();
            });
        }
        let mut vectors = Vec::with_capacity(batch.at.len());
        for u in &batch.at {
            match (&found[*u], fresh[*u]) {
                (Some((v, _, _)), _) | (None, Some(v)) => vectors.push(v),
                (None, None) => {
                    return Err(GatewayError::UpstreamShape("a vector went missing".into()))
                }
            }
        }
        let out = embeddings::merged(&answer.model, &vectors, base64, answer.usage.clone());
        // NOTE: the inputs the cache answered were used: counted as hits, so
        // that eviction keeps them.
        let request_id = crate::clock::new_request_id();
        for (k, f) in keys.iter().zip(&found) {
            if let Some((_, _, h)) = f {
                b.cache.record_hit(tenant, h, &k.text, &request_id);
            }
        }
        for n in [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::TRANSFER_ENCODING,
        ] {
            rparts.headers.remove(n);
        }
        rparts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            rparts.headers.insert("x-modelcache-request-id", v);
        }
        Ok((Response::from_parts(rparts, full(out)), Outcome::Miss))
    }

    /// Sends the request upstream and streams the answer back, teeing it into
    /// `write` when the answer is a 200.
    async fn forward(
        &self,
        upstream: &Upstream,
        parts: &http::request::Parts,
        body: ProxyBody,
        write: Option<PendingWrite>,
        verify: Option<Verify>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let t0 = Instant::now();
        let resp = upstream.send(parts, body).await?;
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
        if let Some(v) = verify {
            let cache = self.cache.get();
            if status.is_success() {
                let now = now_ms();
                if self.verified.verify(v.tenant.name(), &v.caller, now) {
                    if let Some(c) = cache {
                        c.record_verified_key(v.tenant.name(), &v.caller, now);
                    }
                }
            } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                self.verified.revoke(v.tenant.name(), &v.caller);
                if let Some(c) = cache {
                    c.revoke_verified_key(v.tenant.name(), &v.caller);
                }
            }
        }
        let (mut rparts, mut rbody) = resp.into_parts();
        // NOTE: a body that has already failed (a broken chunk-size line
        // right after the head) is the gateway's 502 while no head has gone
        // to the client; a failure found later cuts the connection after the
        // upstream's head (`FlushBeforeError`). Neither is ever cached.
        let first = match rbody.frame().now_or_never() {
            Some(Some(Err(e))) => return Err(GatewayError::UpstreamBody(e.to_string())),
            Some(Some(Ok(frame))) => Some(frame),
            Some(None) | None => None,
        };
        strip_hop_by_hop(&mut rparts.headers);
        let body = IdleTimeout::new(Peeked::new(first, rbody), upstream.idle_timeout());
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
                let cap = self.server.max_answer_bytes;
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
        Ok(Response::from_parts(
            rparts,
            boxed(FlushBeforeError::new(body)),
        ))
    }

    /// A stored answer as the response `key` asks for: JSON, or SSE events;
    /// None when it cannot be replayed faithfully.
    fn answer_response(
        &self,
        key: &CacheKey,
        answer: &str,
        mint: Option<Mint<'_>>,
    ) -> Option<Response<ProxyBody>> {
        // NOTE: a Responses answer is served under an id minted here, which
        // the client may chain onto or fetch: remembered for the tenant.
        let served = match key.endpoint {
            Endpoint::Responses => {
                let id = crate::clock::completion_id(Endpoint::Responses);
                let served = responses::served(answer, &id)?;
                if let Some(m) = mint.filter(|m| m.body.get("store") != Some(&Value::Bool(false))) {
                    let s = responses::Served {
                        tenant: m.tenant.to_string(),
                        response: served.clone(),
                        input: responses::input_items(m.body),
                    };
                    // NOTE: kept in the tenant's store too, so that a restart or
                    // another replica can still answer a chain onto it.
                    if let Some(cache) = self.cache.get() {
                        let (cache, row) = (cache.clone(), s.stored());
                        let (tenant, id, ttl) = (m.tenant.to_string(), id.clone(), m.ttl);
                        cache.begin_write();
                        tokio::spawn(async move {
                            let key = crate::keying::responses::minted_key(&id);
                            cache.store_answer(&tenant, &key, row, None, ttl).await;
                            cache.end_write();
                        });
                    }
                    self.minted.remember(&id, s);
                }
                Some(served)
            }
            _ => None,
        };
        let mut resp = if key.stream {
            let events = match &served {
                Some(r) => responses::sse_events(r)?,
                None => replay::sse_events(key.endpoint, answer, key.include_usage)?,
            };
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
            let body = match &served {
                Some(r) => Bytes::from(r.to_string()),
                None => replay::json_body(key.endpoint, answer)?,
            };
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        resp.headers_mut().insert(
            "x-modelcache-similarity",
            HeaderValue::from_static("1.0000"),
        );
        Some(resp)
    }

    /// `GET` or `DELETE /v1/responses/{id}` for an id this gateway minted:
    /// answered here, for a verified caller of the tenant it was served to
    /// (404 if it is not held); None for anything else, which the upstream
    /// answers (an unverified key included: the upstream judges it).
    async fn minted_response(
        &self,
        parts: &http::request::Parts,
        tenant: &Tenant,
        caller: &[u8; 32],
        ttl: Duration,
    ) -> Option<(Response<ProxyBody>, Outcome)> {
        let id = parts.uri.path().strip_prefix("/v1/responses/")?;
        if !id.starts_with(responses::MINTED_PREFIX) || id.contains('/') {
            return None;
        }
        if !matches!(parts.method, Method::GET | Method::DELETE) {
            return None;
        }
        let cache = self.cache.get()?;
        if !self.key_verified(cache, tenant.name(), caller, ttl).await {
            return None;
        }
        let found = match parts.method {
            Method::GET => self
                .find_minted(tenant, id)
                .await
                .map(|s| s.response.to_string()),
            Method::DELETE => self
                .forget_minted(tenant, id)
                .await
                .then(|| json!({"id": id, "object": "response", "deleted": true}).to_string()),
            _ => return None,
        };
        Some(match found {
            Some(body) => (json_response(Bytes::from(body)), Outcome::HitExact),
            None => (
                GatewayError::NotHeld(id.to_string()).to_response(),
                Outcome::Error,
            ),
        })
    }

    /// What `tenant` was served under the minted `id`: from memory, else
    /// from its store (after a restart, or minted by another replica).
    async fn find_minted(&self, tenant: &Tenant, id: &str) -> Option<Arc<responses::Served>> {
        if let Some(s) = self.minted.get(tenant.name(), id) {
            return Some(s);
        }
        let cache = self.cache.get()?;
        let key = crate::keying::responses::minted_key(id);
        let opts = LookupOptions::for_policy(tenant.policy());
        let hit = cache.lookup(tenant.name(), &key, &opts).await.hit?;
        let served = responses::Served::from_stored(tenant.name(), &hit.entry.answer)?;
        self.minted.remember(id, served);
        self.minted.get(tenant.name(), id)
    }

    /// Forgets the minted `id` of `tenant` everywhere; whether it was held.
    async fn forget_minted(&self, tenant: &Tenant, id: &str) -> bool {
        let in_memory = self.minted.forget(tenant.name(), id);
        let Some(cache) = self.cache.get() else {
            return in_memory;
        };
        let key = crate::keying::responses::minted_key(id);
        let opts = LookupOptions::for_policy(tenant.policy());
        let in_store = match cache.lookup(tenant.name(), &key, &opts).await.hit {
            Some(h) => cache
                .remove(tenant.name(), RemoveTarget::Ids(vec![h.entry.id]))
                .await
                .is_ok(),
            None => false,
        };
        in_memory || in_store
    }

    fn hit_response(
        &self,
        key: &CacheKey,
        hit: &Hit,
        mint: Option<Mint<'_>>,
    ) -> Option<Response<ProxyBody>> {
        let mut resp = self.answer_response(key, &hit.entry.answer, mint)?;
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

/// Whom a Responses answer is minted for, the request it answers, and how
/// long what was served is kept.
#[derive(Clone, Copy)]
struct Mint<'a> {
    tenant: &'a str,
    body: &'a Value,
    ttl: Duration,
}

/// An embeddings request the cache takes part in.
#[derive(Clone, Copy)]
struct EmbeddingsBatch<'a> {
    tenant: &'a Arc<Tenant>,
    cache: &'a Arc<Cache>,
    parts: &'a http::request::Parts,
    original: &'a Bytes,
    body: &'a Value,
    whole: &'a CacheKey,
    options: &'a LookupOptions,
    /// Whether to look the inputs up (else every input misses).
    look: bool,
    /// How long the vectors live, if they are written.
    write: Option<Duration>,
}

/// A copy of a request's head.
fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let (mut out, ()) = Request::new(()).into_parts();
    out.method = p.method.clone();
    out.uri = p.uri.clone();
    out.version = p.version;
    out.headers = p.headers.clone();
    out
}

/// A JSON response of `body`.
fn json_response(body: Bytes) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A miss waiting for its answer.
struct PendingWrite {
    cache: Arc<Cache>,
    tenant: Arc<Tenant>,
    key: CacheKey,
    embedding: Option<Vec<f32>>,
    ttl: Duration,
    /// Identical misses waiting for this answer; dropped unfinished (no
    /// storable answer), it sends them upstream on their own.
    flight: Option<FlightGuard>,
}

impl PendingWrite {
    async fn finish(self, ct: Option<String>, ce: Option<String>, copy: Bytes, cap: usize) {
        let answer = match storable_answer(
            self.key.endpoint,
            ct.as_deref(),
            ce.as_deref(),
            &copy,
            cap,
            &self.tenant.policy().cacheable_finish_reasons,
        ) {
            Ok(a) => a.to_string(),
            Err(reason) => {
                tracing::debug!(%reason, "answer not cached");
                self.cache.count_refused();
                return;
            }
        };
        if let Some(f) = self.flight {
            f.finish(&answer);
        }
        self.cache
            .store_answer(
                self.tenant.name(),
                &self.key,
                answer,
                self.embedding,
                self.ttl,
            )
            .await;
    }
}

async fn read_bounded(
    mut body: Incoming,
    max: usize,
    stall: Duration,
) -> Result<BodyRead, GatewayError> {
    let mut buf = BytesMut::new();
    loop {
        let Ok(next) = tokio::time::timeout(stall, body.frame()).await else {
            return Err(GatewayError::RequestTimeout(stall));
        };
        let Some(frame) = next else { break };
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
