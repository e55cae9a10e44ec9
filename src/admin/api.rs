//! The admin API under `/admin/`: tenants, entries, the hit log, flushes and
//! a dry-run lookup. Every route needs the admin token (checked in `mod.rs`)
//! and answers JSON.
//!
//! Owns the routes' parameters and shapes. Deletes and flushes go through the
//! cache's writer, so that the store, the exact layer and the vector index
//! forget an entry together. It must never write anything on a read route,
//! and never flush more than the one tenant a request names.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::{answer_text, error, json_response, request_body, Admin};
use crate::{
    cache::{
        plan::{plan, Facts, Namespace, Plan},
        writeback::RemoveTarget,
        Cache, Considered, Explanation, LookupOptions, Scope,
    },
    http::body::ProxyBody,
    keying::{key_with, Endpoint},
    store::{Entry, ListQuery},
};

type Resp = http::Response<ProxyBody>;
/// A refusal, boxed: responses are large and errors travel far.
type Fail = Box<Resp>;

fn fail(status: StatusCode, code: &str, message: impl Into<String>) -> Fail {
    Box::new(error(status, code, message))
}

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
const PREVIEW_CHARS: usize = 240;

/// An f32 score as JSON, without the f32 noise (0.9, not 0.8999999761581421).
fn score(x: f32) -> Value {
    json!(((x as f64) * 1e6).round() / 1e6)
}

fn preview(s: &str) -> String {
    let mut out: String = s.chars().take(PREVIEW_CHARS).collect();
    if s.chars().nth(PREVIEW_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// An entry as the admin API shows it; `full` adds the whole answer, the
/// stored JSON and the parameters.
fn entry_json(e: &Entry, full: bool) -> Value {
    let answer = answer_text(&e.answer);
    let mut v = json!({
        "id": e.id,
        "tenant": e.tenant,
        "model": e.model,
        "endpoint": e.endpoint,
        "question": e.text,
        "origin": e.origin.as_str(),
        "created_at": e.created_at,
        "expires_at": e.expires_at,
        "hits": e.hits,
        "last_hit_at": e.last_hit_at,
    });
    if full {
        v["answer"] = Value::String(answer);
        v["answer_json"] = serde_json::from_str(&e.answer).unwrap_or(Value::Null);
        v["params"] = serde_json::from_str(&e.params).unwrap_or(Value::Null);
        v["partition"] = Value::String(e.partition.clone());
    } else {
        v["answer_preview"] = Value::String(preview(&answer));
    }
    v
}

fn candidate_json(c: &Considered, of: &Explanation, via: &str) -> Value {
    // NOTE: served means the one the lookup serves: the first that passes.
    let served = of.hit.as_ref().is_some_and(|h| h.entry.id == c.entry.id);
    json!({
        "entry_id": c.entry.id,
        "question": c.entry.text,
        "model": c.entry.model,
        "origin": c.entry.origin.as_str(),
        "answer_preview": preview(&answer_text(&c.entry.answer)),
        "similarity": score(c.similarity),
        "kind": match c.kind { crate::cache::HitKind::Exact => "exact", crate::cache::HitKind::Semantic => "semantic" },
        "via": via,
        "served": served,
        "needed": score(c.verdict.needed.value),
        "checks": c.verdict.checks.iter().map(|k| json!({"name": k.name(), "passed": k.passed(), "detail": k.describe(), "value": k.value()})).collect::<Vec<_>>(),
    })
}

/// Query-string parameters.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(q: Option<&str>) -> Params {
        Params(
            url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn limit(&self, default: usize, max: usize) -> Result<usize, Fail> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    format!("limit must be a number from 1 to {max}"),
                )),
            },
        }
    }
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, Fail> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON object",
        )),
        Err(e) => Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )),
    }
}

fn store_failed(e: crate::cache::CacheError) -> Fail {
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_failed",
        format!("the store failed: {e}"),
    )
}

impl Admin {
    fn loaded(&self) -> Result<&Arc<Cache>, Fail> {
        self.cache.get().ok_or_else(|| {
            fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "cache_unavailable",
                "the cache is not available: it is still loading, failed to load, or every tenant has caching off (see /readyz)",
            )
        })
    }

    /// Routes one authorised `/admin/*` request.
    pub(super) async fn admin(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        actor: &str,
    ) -> Resp {
        let params = Params::parse(query);
        let rest = path.trim_start_matches("/admin").trim_end_matches('/');
        let result = match (method, rest) {
            (&Method::GET, "/tenants") => self.tenants_route().await,
            (&Method::GET, "/entries") => self.entries(&params).await,
            (&Method::GET, "/hits") => self.hits(&params).await,
            (&Method::POST, "/flush") => self.flush(body, actor).await,
            (&Method::POST, "/lookup") => self.lookup(body).await,
            (&Method::POST, "/feedback") => self.feedback(body, actor).await,
            (m, p) if p.starts_with("/entries/") => {
                let id = p["/entries/".len()..].parse::<i64>();
                match (m, id) {
                    (_, Err(_)) => Err(fail(
                        StatusCode::BAD_REQUEST,
                        "invalid_id",
                        "an entry id is a number",
                    )),
                    (&Method::GET, Ok(id)) => self.entry(id).await,
                    (&Method::DELETE, Ok(id)) => self.delete(id, actor).await,
                    _ => Err(fail(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "use GET or DELETE on an entry",
                    )),
                }
            }
            (_, "/tenants" | "/entries" | "/hits" | "/flush" | "/lookup" | "/feedback") => {
                Err(fail(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed on this route",
                ))
            }
            _ => Err(fail(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin route: see the README's admin API section",
            )),
        };
        result.unwrap_or_else(|r| *r)
    }

    /// `GET /admin/tenants`: every configured tenant (and any tenant with
    /// stored entries that is no longer configured).
    async fn tenants_route(&self) -> Result<Resp, Fail> {
        let set = self.snapshot();
        let stored = match self.cache.get() {
            Some(c) => {
                c.settle_hits().await;
                c.with_store(|s| s.stats()).await.map_err(store_failed)?
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        let mut names: Vec<(String, Option<Arc<crate::tenants::Tenant>>)> = set
            .all()
            .iter()
            .map(|t| (t.name().to_string(), Some(t.clone())))
            .collect();
        for s in &stored {
            if !names.iter().any(|(n, _)| n == &s.tenant) {
                names.push((s.tenant.clone(), None));
            }
        }
        for (name, tenant) in names {
            let st = stored.iter().find(|s| s.tenant == name);
            let f = self.metrics.tenant_figures(&name);
            let mut v = json!({
                "name": name,
                "configured": tenant.is_some(),
                "entries": st.map_or(0, |s| s.entries),
                "stored_hits": st.map_or(0, |s| s.hits),
                "since_start": {
                    "hits": f.hits,
                    "misses": f.misses,
                    "bypassed": f.bypassed,
                    "errors": f.errors,
                    "hit_rate": f.hit_rate(),
                    "saved_tokens": {
                        "prompt": f.saved_prompt_tokens,
                        "completion": f.saved_completion_tokens,
                        "total": f.saved_prompt_tokens + f.saved_completion_tokens,
                    },
                    "saved_usd": f.saved_usd,
                },
            });
            if let Some(c) = self.cache.get().and_then(|c| c.calibration(&name)) {
                v["calibration"] = json!({
                    "max_wrong_rate": c.max_wrong_rate,
                    "pending": c.pairs == 0,
                    "offset": score(c.offset),
                    "wrong_rate_on_pairs": c.wrong_rate,
                    "recall_on_pairs": c.recall,
                    "pairs": c.pairs,
                });
            }
            if let Some(t) = tenant {
                let p = t.policy();
                v["policy"] = json!({
                    "mode": p.mode.as_str(),
                    "threshold": score(p.threshold),
                    "long_threshold": score(p.long_threshold),
                    "ttl_seconds": p.ttl.as_secs(),
                    "max_entries": p.max_entries,
                });
            }
            out.push(v);
        }
        Ok(json_response(StatusCode::OK, &json!({"tenants": out})))
    }

    /// `GET /admin/entries?tenant=&model=&q=&limit=&cursor=`, newest first.
    async fn entries(&self, p: &Params) -> Result<Resp, Fail> {
        let limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
        let before_id = match p.get("cursor") {
            None => None,
            Some(c) => Some(c.parse::<i64>().map_err(|_| {
                fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "cursor is the next_cursor of the previous page",
                )
            })?),
        };
        let q = ListQuery {
            tenant: p.get("tenant").map(str::to_string),
            model: p.get("model").map(str::to_string),
            text: p.get("q").map(str::to_string),
            before_id,
            limit,
        };
        let cache = self.loaded()?;
        cache.settle_hits().await;
        let rows = cache
            .with_store(move |s| s.list(&q))
            .await
            .map_err(store_failed)?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|e| e.id.to_string()))
            .flatten();
        let entries: Vec<Value> = rows.iter().map(|e| entry_json(e, false)).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"entries": entries, "next_cursor": next}),
        ))
    }

    async fn find(&self, id: i64) -> Result<Entry, Fail> {
        let cache = self.loaded()?;
        cache.settle_hits().await;
        cache
            .with_store(move |s| s.get(id))
            .await
            .map_err(store_failed)?
            .ok_or_else(|| {
                fail(
                    StatusCode::NOT_FOUND,
                    "entry_not_found",
                    format!("no entry {id}"),
                )
            })
    }

    /// `GET /admin/entries/{id}`.
    async fn entry(&self, id: i64) -> Result<Resp, Fail> {
        let e = self.find(id).await?;
        Ok(json_response(StatusCode::OK, &entry_json(&e, true)))
    }

    /// `DELETE /admin/entries/{id}`: gone from disk, the exact layer and the
    /// index before the answer.
    async fn delete(&self, id: i64, actor: &str) -> Result<Resp, Fail> {
        let e = self.find(id).await?;
        let cache = self.loaded()?;
        let removed = cache
            .remove(&e.tenant, RemoveTarget::Ids(vec![id]))
            .await
            .map_err(store_failed)?;
        tracing::info!(actor, tenant = %e.tenant, id, deleted = removed.len(), "admin delete");
        Ok(json_response(
            StatusCode::OK,
            &json!({"deleted": removed.len(), "id": id, "tenant": e.tenant}),
        ))
    }

    /// `POST /admin/flush` with `{"tenant": "...", "model": "..."}`.
    async fn flush(&self, body: &[u8], actor: &str) -> Result<Resp, Fail> {
        let o = body_object(body)?;
        let tenant = match o.get("tenant") {
            Some(Value::String(t)) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "tenant_required",
                    "name the tenant to flush: {\"tenant\": \"...\"} (and optionally \"model\"); nothing flushes every tenant",
                ))
            }
        };
        let model = match o.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
            Some(_) => {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_model",
                    "model must be a non-empty string",
                ))
            }
        };
        let cache = self.loaded()?;
        let known = self.snapshot().by_name(&tenant).is_some()
            || cache
                .with_store(|s| s.tenants())
                .await
                .map_err(store_failed)?
                .contains(&tenant);
        if !known {
            return Err(fail(
                StatusCode::NOT_FOUND,
                "tenant_not_found",
                format!("no tenant {tenant:?} is configured or has entries"),
            ));
        }
        let removed = cache
            .remove(
                &tenant,
                RemoveTarget::All {
                    model: model.clone(),
                },
            )
            .await
            .map_err(store_failed)?;
        tracing::info!(
            actor,
            tenant,
            model = model.as_deref().unwrap_or("*"),
            deleted = removed.len(),
            "admin flush"
        );
        Ok(json_response(
            StatusCode::OK,
            &json!({"tenant": tenant, "model": model, "deleted": removed.len()}),
        ))
    }

    /// `GET /admin/hits?tenant=&limit=`: recent hits, each probe beside the
    /// entry that answered it.
    async fn hits(&self, p: &Params) -> Result<Resp, Fail> {
        let limit = p.limit(DEFAULT_LIMIT, 1000)?;
        let tenant = p.get("tenant").map(str::to_string);
        let cache = self.loaded()?;
        cache.settle_hits().await;
        let rows = cache
            .with_store(move |s| s.hit_log(tenant.as_deref(), limit))
            .await
            .map_err(store_failed)?;
        let hits: Vec<Value> = rows
            .iter()
            .map(|h| {
                json!({
                    "id": h.id,
                    "at": h.at,
                    "tenant": h.tenant,
                    "entry_id": h.entry_id,
                    "probe": h.probe,
                    "matched": h.matched,
                    "model": h.model,
                    "similarity": score(h.similarity),
                    "exact": h.similarity >= 1.0,
                    "request_id": h.request_id,
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, &json!({"hits": hits})))
    }

    /// `POST /admin/feedback` with `{"entry_id", "request_id", "correct"}`:
    /// a verdict on a served hit, named by the `x-modelcache-request-id` and
    /// `x-modelcache-entry` headers it was served with.
    async fn feedback(&self, body: &[u8], actor: &str) -> Result<Resp, Fail> {
        let o = body_object(body)?;
        let bad = |msg: &str| fail(StatusCode::BAD_REQUEST, "invalid_request", msg.to_string());
        let entry_id = o
            .get("entry_id")
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
            .ok_or_else(|| bad("entry_id is required: the x-modelcache-entry header of the hit"))?;
        let request_id = match o.get("request_id") {
            Some(Value::String(r)) if !r.is_empty() => r.clone(),
            _ => {
                return Err(bad(
                    "request_id is required: the x-modelcache-request-id header of the hit",
                ))
            }
        };
        let Some(Value::Bool(correct)) = o.get("correct") else {
            return Err(bad("correct must be true or false"));
        };
        let cache = self.loaded()?;
        cache.settle_hits().await;
        let rid = request_id.clone();
        let hit = cache
            .with_store(move |s| s.hit_by_request(&rid))
            .await
            .map_err(store_failed)?
            .filter(|h| h.entry_id == entry_id)
            .ok_or_else(|| {
                fail(
                    StatusCode::NOT_FOUND,
                    "hit_not_found",
                    format!("no hit {request_id} of entry {entry_id} in the hit log (it keeps the last 100,000 hits)"),
                )
            })?;
        let verdict = if *correct { "correct" } else { "wrong" };
        let action = if *correct {
            "none"
        } else {
            cache
                .report_wrong(&hit.tenant, entry_id, &hit.probe)
                .await
                .map_err(store_failed)?
        };
        self.metrics
            .feedback
            .with_label_values(&[hit.tenant.as_str(), verdict])
            .inc();
        tracing::info!(actor, tenant = %hit.tenant, entry_id, request_id, verdict, action, "admin feedback");
        Ok(json_response(
            StatusCode::OK,
            &json!({"entry_id": entry_id, "request_id": request_id, "tenant": hit.tenant,
                    "verdict": verdict, "action": action}),
        ))
    }

    /// `POST /admin/lookup`: the real lookup of a chat request (or, with
    /// `route`, of a request of another cacheable API as a client sends
    /// it), dry.
    async fn lookup(&self, body: &[u8]) -> Result<Resp, Fail> {
        let o = body_object(body)?;
        let bad = |msg: &str| fail(StatusCode::BAD_REQUEST, "invalid_request", msg.to_string());
        let set = self.snapshot();
        let tenant = match o.get("tenant") {
            Some(Value::String(n)) if !n.is_empty() => set.by_name(n),
            None | Some(Value::Null) => set.catch_all().or_else(|| set.all().first().cloned()),
            Some(_) => return Err(bad("tenant must be a tenant's name")),
        }
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "tenant_not_found", "no such tenant"))?;
        let route = match o.get("route") {
            None | Some(Value::Null) => Endpoint::Chat,
            Some(Value::String(r)) => match Endpoint::from_path(&format!("/v1/{r}"))
                .or_else(|| (r == "chat").then_some(Endpoint::Chat))
            {
                Some(Endpoint::Embeddings) => {
                    return Err(bad("embeddings are matched exactly, one input at a time: the dry run covers chat, completions, messages and responses"))
                }
                Some(e) => e,
                None => return Err(bad("route must be chat, completions, messages or responses")),
            },
            Some(_) => return Err(bad("route must be a string")),
        };
        // NOTE: a chat is given as model, messages and params; any route
        // may instead give `request`, the body as a client sends it.
        let body = match (o.get("request"), route) {
            (Some(Value::Object(r)), _) => Value::Object(r.clone()),
            (Some(_), _) => return Err(bad("request must be the request body, a JSON object")),
            (None, Endpoint::Chat) => {
                let Some(Value::String(model)) = o.get("model") else {
                    return Err(bad("model is required"));
                };
                let Some(Value::Array(msgs)) = o.get("messages") else {
                    return Err(bad("messages must be a list of chat messages"));
                };
                let params = match o.get("params") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(p)) => Some(p),
                    Some(_) => return Err(bad("params must be an object of request fields")),
                };
                request_body(model, msgs, params)
            }
            (None, _) => return Err(bad("with this route, request must be the request body")),
        };
        let model = body.get("model").and_then(Value::as_str).unwrap_or("");
        // The request headers that shape a key (`anthropic-version`,
        // `anthropic-beta`), as a client sends them.
        let headers = match o.get("headers") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(h)) => h.clone(),
            Some(_) => return Err(bad("headers must be an object of header names to values")),
        };
        let header = |n: &str| headers.get(n).and_then(Value::as_str);
        let namespace = match o.get("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if crate::keying::namespace(s.as_bytes()).is_some() => {
                Some(s.as_str())
            }
            Some(_) => {
                return Err(bad(
                    "namespace must be a string of 1 to 256 bytes of visible ASCII",
                ))
            }
        };
        let min_similarity = match o.get("threshold") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(t) if (0.0..=1.0).contains(&t) => Some(t as f32),
                _ => return Err(bad("threshold must be a number from 0 to 1")),
            },
        };
        let policy = tenant.policy();
        let cache = self.loaded()?;
        let facts = Facts {
            endpoint: Some(route),
            anthropic: [header("anthropic-version"), header("anthropic-beta")],
            namespace: namespace.map_or(Namespace::None, Namespace::Named),
            min_similarity,
            ..Facts::chat(&body)
        };
        // NOTE: the proxy's own plan; a skipped request still shows what is
        // stored near it, under the key the proxy would build.
        let mut notes = Vec::new();
        let (key, api_key, opts, reads) = match plan(Some(policy), true, &facts) {
            Plan::Lookup(l) => {
                if !l.reads {
                    notes.push(format!(
                        "cache mode {}: requests are never served from cache",
                        policy.mode.as_str()
                    ));
                }
                (l.key, l.api_key, l.options, l.reads)
            }
            Plan::Skip(reason) => {
                notes.push(reason.describe());
                let opts = crate::keying::KeyOptions {
                    anthropic_version: facts.anthropic[0],
                    anthropic_beta: facts.anthropic[1],
                    ..policy.key_options(namespace)
                };
                let key = key_with(route, &body, &opts).map_err(|e| bad(&e.to_string()))?;
                let opts = LookupOptions {
                    min_similarity,
                    ..LookupOptions::for_policy(policy)
                };
                (key, None, opts, false)
            }
        };
        if !key.semantic {
            notes.push("this request is matched exactly only (non-text content, tool turns, or more than max_messages messages)".into());
        }
        let found = cache
            .explain(tenant.name(), &key, &opts, Scope::default())
            .await;
        let mut candidates: Vec<Value> = found
            .candidates
            .iter()
            .map(|c| candidate_json(c, &found, "request"))
            .collect();
        let mut hit = found.hit.clone();
        // The second lookup of the proxy: entries inserted through the
        // ModelCache API, for a request that differs only in sampling.
        if let Some(alt) = api_key {
            let probe = Scope::api_entries(found.embedding.clone());
            let alt_found = cache.explain(tenant.name(), &alt, &opts, probe).await;
            if hit.is_none() {
                hit = alt_found.hit.clone();
            }
            candidates.extend(
                alt_found
                    .candidates
                    .iter()
                    .map(|c| candidate_json(c, &alt_found, "api_entries_any_sampling")),
            );
        }
        let would_serve = hit.is_some() && reads;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "tenant": tenant.name(),
                "route": route.as_str(),
                "model": model,
                "verdict": if would_serve { "hit" } else { "miss" },
                "hit": hit.map(|h| json!({
                    "entry_id": h.entry.id,
                    "similarity": score(h.similarity),
                    "kind": match h.kind { crate::cache::HitKind::Exact => "exact", crate::cache::HitKind::Semantic => "semantic" },
                    "question": h.entry.text,
                    "answer": answer_text(&h.entry.answer),
                })),
                "threshold": score(found.threshold),
                "semantic": found.semantic,
                "key_text": key.text,
                "embedded_text": key.embed_text,
                "notes": notes,
                "candidates": candidates,
            }),
        ))
    }
}
