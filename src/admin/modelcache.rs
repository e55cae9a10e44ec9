//! The ModelCache wire API: `POST /modelcache` with `insert`, `query`,
//! `remove` and `register`, as `shared/modelcache-api.md` lays it out.
//!
//! Owns decoding both body encodings (a JSON object, or a JSON string holding
//! one), the error codes, and mapping each call onto the cache. Entries are
//! ordinary cache entries: keyed exactly as a proxied chat completion with the
//! same model and messages and no answer-shaping parameters. It must never
//! answer for a tenant other than the caller's, and never fail with a status
//! other than 200 except for a body that is not JSON (400), one too large
//! (413), or a caller that belongs to no tenant (401).

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use super::{answer_text, fingerprint, json_response, same_secret, Admin};
use crate::{
    cache::{
        plan::{plan, Facts, Namespace, Plan, SkipReason},
        row,
        writeback::RemoveTarget,
    },
    clock::now_ms,
    config::{CacheMode, KeylessAccess},
    http::body::ProxyBody,
    keying::CacheKey,
    store::{NewEntry, Origin},
    tenants::{caller_hash, credential, Tenant, TenantSet},
};

type Resp = http::Response<ProxyBody>;

const TYPES: &str = "query, insert, remove, register";

/// The query-miss object with an error code and description: the shape of
/// every request-level error.
fn query_shape(code: i64, desc: impl Into<String>, started: Instant) -> Value {
    json!({
        "errorCode": code,
        "errorDesc": desc.into(),
        "cacheHit": false,
        "delta_time": delta(started),
        "hit_query": "",
        "answer": "",
    })
}

fn delta(started: Instant) -> String {
    format!("{:.2}s", started.elapsed().as_secs_f64())
}

fn ok(v: Value) -> Resp {
    json_response(StatusCode::OK, &v)
}

fn write_error(code: i64, desc: impl Into<String>) -> Resp {
    ok(json!({"errorCode": code, "errorDesc": desc.into(), "writeStatus": "exception"}))
}

fn remove_error(code: i64, desc: impl Into<String>) -> Resp {
    let status_key = if code == 401 {
        "removeStatus"
    } else {
        "writeStatus"
    };
    ok(
        json!({"errorCode": code, "errorDesc": desc.into(), "response": {}, status_key: "exception"}),
    )
}

fn register_error(desc: impl Into<String>) -> Resp {
    ok(
        json!({"errorCode": 502, "errorDesc": desc.into(), "response": "", "writeStatus": "exception"}),
    )
}

/// 413 for a body over `max_body_bytes`.
pub(super) fn too_large(max: usize) -> Resp {
    json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &query_shape(
            101,
            format!(
                "the body is over {max} bytes (server.max_body_bytes); insert in smaller batches"
            ),
            Instant::now(),
        ),
    )
}

/// 400 for a body that could not be read.
pub(super) fn unreadable(e: &str) -> Resp {
    json_response(
        StatusCode::BAD_REQUEST,
        &query_shape(
            101,
            format!("the body could not be read: {e}"),
            Instant::now(),
        ),
    )
}

fn unauthorized(desc: impl Into<String>) -> Resp {
    json_response(
        StatusCode::UNAUTHORIZED,
        &query_shape(100, desc, Instant::now()),
    )
}

/// 401 for a write (`insert`, `remove`, `register`) by a caller without a
/// tenant key: the query shape, plus the write status a writer reads.
fn keyless_write(kind: &str) -> Resp {
    let mut v = query_shape(
        100,
        format!(
            "{kind} needs a tenant's key (Authorization: Bearer <key>) or the admin token: \
             callers without one may only query. To let them write, set \
             [admin] modelcache_writes_without_key = true (anyone they reach can then \
             change the answers the proxy serves)"
        ),
        Instant::now(),
    );
    v["writeStatus"] = json!("exception");
    json_response(StatusCode::UNAUTHORIZED, &v)
}

/// Checks a ModelCache message list: a non-empty array of objects, each with
/// a string `role`.
fn messages<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a Vec<Value>, String> {
    let Some(list) = v.and_then(Value::as_array) else {
        return Err(format!(
            "{what} must be a list of messages, e.g. [{{\"role\": \"user\", \"content\": \"hello\"}}]"
        ));
    };
    if list.is_empty() {
        return Err(format!("{what} must hold at least one message"));
    }
    for (i, m) in list.iter().enumerate() {
        if m.get("role").and_then(Value::as_str).is_none() {
            return Err(format!("{what}[{i}] needs a string role"));
        }
        if m.get("content").is_none() {
            return Err(format!("{what}[{i}] needs a content"));
        }
    }
    Ok(list)
}

/// The `chat.completion` an entry inserted through the API replays.
fn completion(model: &str, answer: &str, now: i64) -> String {
    json!({
        "id": crate::clock::completion_id(crate::keying::Endpoint::Chat),
        "object": "chat.completion",
        "created": now / 1000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
    })
    .to_string()
}

/// The key `insert` gives a ModelCache question (`msgs`) under `model`, for
/// a tenant with `policy`: the proxy's key of the same chat.
pub fn api_key(
    policy: &crate::config::Policy,
    model: &str,
    msgs: &[Value],
    namespace: Option<&str>,
) -> Result<CacheKey, String> {
    super::request_key(policy, model, msgs, None, namespace)
}

/// The entry `insert` writes for `answer` under `key`: the `chat.completion`
/// it replays, living the tenant's TTL. `modelcache import` writes the same.
pub fn api_entry(
    tenant: &str,
    policy: &crate::config::Policy,
    key: &CacheKey,
    model: &str,
    answer: &str,
    embedding: Option<Vec<f32>>,
    now: i64,
) -> NewEntry {
    row(
        tenant,
        key,
        completion(model, answer, now),
        embedding,
        now,
        policy.ttl,
        Origin::Api,
    )
}

impl Admin {
    /// The tenant a `/modelcache` caller addresses for a call of type
    /// `kind`, and who it is for the audit log; or the refusal.
    fn modelcache_tenant(
        &self,
        set: &TenantSet,
        h: &HeaderMap,
        peer: SocketAddr,
        model: &str,
        kind: &str,
    ) -> Result<(Arc<Tenant>, String), Box<Resp>> {
        let cred = credential(h).filter(|c| !c.is_empty());
        if let (Some(c), Some(token)) = (cred, &self.settings.token) {
            if same_secret(c, token.expose()) {
                // NOTE: the admin token may address any tenant, by name.
                let named = h.get("x-modelcache-tenant").and_then(|v| v.to_str().ok());
                let t = match named {
                    Some(n) => set.by_name(n.trim()),
                    None => set.catch_all(),
                };
                return match t {
                    Some(t) => Ok((t, format!("admin token {} from {peer}", fingerprint(c)))),
                    None => Err(Box::new(unauthorized(
                        "with the admin token, name the tenant in x-modelcache-tenant (there is no catch-all tenant, or no tenant of that name)",
                    ))),
                };
            }
        }
        let caller = caller_hash(h);
        if let Some(c) = cred {
            if let Some(t) = set.by_key(&caller) {
                return Ok((t, format!("tenant key {} from {peer}", fingerprint(c))));
            }
        }
        let allowed = match self.settings.modelcache_without_key {
            KeylessAccess::Loopback => peer.ip().is_loopback(),
            KeylessAccess::Any => true,
            KeylessAccess::Never => false,
        };
        if !allowed {
            return Err(Box::new(unauthorized(
                "send a tenant's key as Authorization: Bearer <key>: callers without one are not accepted here (admin.modelcache_without_key)",
            )));
        }
        // NOTE: an inserted answer is served by the proxy to every caller of
        // the tenant, so a caller that proved nothing may read, never write,
        // unless the operator says so.
        if kind != "query" && !self.settings.modelcache_writes_without_key {
            return Err(Box::new(keyless_write(kind)));
        }
        set.by_key_or_header(h, &caller)
            .or_else(|| set.by_model(model))
            .or_else(|| set.catch_all())
            .map(|t| (t, format!("no tenant key, from {peer}")))
            .ok_or_else(|| {
                Box::new(unauthorized(
                    "no tenant matches this caller: send a tenant's key as Authorization: Bearer <key>",
                ))
            })
    }

    /// `POST /modelcache`.
    pub(super) async fn modelcache(&self, h: &HeaderMap, peer: SocketAddr, body: &Bytes) -> Resp {
        let started = Instant::now();
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &query_shape(101, format!("the body is not JSON: {e}"), started),
                )
            }
        };
        // NOTE: ModelCache's README posts `json=json.dumps(data)`: a JSON
        // string whose content is the request.
        let v = match v {
            Value::String(s) => match serde_json::from_str::<Value>(&s) {
                Ok(inner) => inner,
                Err(e) => {
                    return ok(query_shape(
                        101,
                        format!("the body is a JSON string, but its content is not JSON: {e}"),
                        started,
                    ))
                }
            },
            other => other,
        };
        let Some(obj) = v.as_object() else {
            return ok(query_shape(
                101,
                "the body must be a JSON object, or a JSON string holding one",
                started,
            ));
        };
        let kind = match obj.get("type") {
            Some(Value::String(t))
                if ["query", "insert", "remove", "register"].contains(&t.as_str()) =>
            {
                t.as_str()
            }
            Some(other) => {
                return ok(query_shape(
                    102,
                    format!("type {other} is not valid: use one of {TYPES}"),
                    started,
                ))
            }
            None => {
                return ok(query_shape(
                    102,
                    format!("type is missing: use one of {TYPES}"),
                    started,
                ))
            }
        };
        let model = match obj.get("scope").and_then(|s| s.get("model")) {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            _ => {
                return ok(query_shape(
                    103,
                    "scope.model is missing: name the model, e.g. {\"scope\": {\"model\": \"gpt-4o-mini\"}}",
                    started,
                ))
            }
        };
        let set = self.snapshot();
        let (tenant, actor) = match self.modelcache_tenant(&set, h, peer, &model, kind) {
            Ok(x) => x,
            Err(r) => return *r,
        };
        let namespace = match h
            .get("x-modelcache-namespace")
            .map(|v| crate::keying::namespace(v.as_bytes()))
        {
            None => None,
            Some(Some(s)) => Some(s.to_string()),
            Some(None) => {
                return ok(query_shape(
                    103,
                    "x-modelcache-namespace must be 1 to 256 bytes of visible ASCII",
                    started,
                ))
            }
        };
        match kind {
            "query" => {
                self.mc_query(obj, &tenant, &model, namespace.as_deref(), started)
                    .await
            }
            "insert" => {
                self.mc_insert(obj, &tenant, &model, namespace.as_deref(), &actor, started)
                    .await
            }
            "remove" => self.mc_remove(obj, &tenant, &model, &actor).await,
            _ => self.mc_register(&tenant, &model, &actor).await,
        }
    }

    fn key(
        tenant: &Tenant,
        model: &str,
        msgs: &[Value],
        namespace: Option<&str>,
    ) -> Result<CacheKey, String> {
        api_key(tenant.policy(), model, msgs, namespace)
    }

    async fn mc_query(
        &self,
        obj: &Map<String, Value>,
        tenant: &Tenant,
        model: &str,
        namespace: Option<&str>,
        started: Instant,
    ) -> Resp {
        let msgs = match messages(obj.get("query"), "query") {
            Ok(m) => m,
            Err(e) => return ok(query_shape(103, e, started)),
        };
        // NOTE: the proxy's own plan, on the chat body this query stands for.
        let body = super::request_body(model, msgs, None);
        let facts = Facts {
            namespace: namespace.map_or(Namespace::None, Namespace::Named),
            samples: false,
            ..Facts::chat(&body)
        };
        let cache = self.cache.get();
        let policy = tenant.policy();
        let off = || {
            ok(query_shape(
                202,
                format!(
                    "tenant {} does not serve from cache (cache mode {})",
                    tenant.name(),
                    policy.mode.as_str()
                ),
                started,
            ))
        };
        let (lookup, cache) = match (plan(Some(policy), cache.is_some(), &facts), cache) {
            (Plan::Lookup(l), Some(c)) if l.reads => (l, c),
            (Plan::Lookup(_), Some(_)) | (Plan::Skip(SkipReason::CacheOff), _) => return off(),
            (Plan::Skip(SkipReason::Uncacheable(u)), _) => {
                return ok(query_shape(103, format!("query: {u}"), started))
            }
            (Plan::Skip(SkipReason::NotLoaded), _) | (Plan::Lookup(_), None) => {
                return ok(query_shape(
                    201,
                    "the cache is not available: it is still loading or failed to load (see /readyz and the log)",
                    started,
                ))
            }
            (Plan::Skip(reason), _) => return ok(query_shape(202, reason.describe(), started)),
        };
        let (key, opts) = (&lookup.key, &lookup.options);
        let found = cache.lookup(tenant.name(), key, opts).await;
        match found.hit {
            Some(hit) => {
                let request_id = crate::clock::new_request_id();
                cache.record_hit(tenant.name(), &hit, &key.text, &request_id);
                let mut r = ok(json!({
                    "errorCode": 0,
                    "errorDesc": "",
                    "cacheHit": true,
                    "delta_time": delta(started),
                    "hit_query": hit.entry.text,
                    "answer": answer_text(&hit.entry.answer),
                }));
                // NOTE: the body keeps ModelCache's shape; the ids for
                // /admin/feedback travel in headers.
                for (name, value) in [
                    ("x-modelcache-request-id", request_id),
                    ("x-modelcache-entry", hit.entry.id.to_string()),
                ] {
                    if let Ok(v) = http::HeaderValue::from_str(&value) {
                        r.headers_mut().insert(name, v);
                    }
                }
                r
            }
            None => ok(query_shape(0, "", started)),
        }
    }

    async fn mc_insert(
        &self,
        obj: &Map<String, Value>,
        tenant: &Tenant,
        model: &str,
        namespace: Option<&str>,
        actor: &str,
        started: Instant,
    ) -> Resp {
        let items = match obj.get("chat_info").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => a,
            _ => {
                return ok(query_shape(
                    103,
                    "chat_info must be a non-empty list of {\"query\": [messages], \"answer\": \"...\"}",
                    started,
                ))
            }
        };
        let mut pairs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let msgs = match messages(item.get("query"), &format!("chat_info[{i}].query")) {
                Ok(m) => m,
                Err(e) => return ok(query_shape(103, e, started)),
            };
            let Some(answer) = item.get("answer").and_then(Value::as_str) else {
                return ok(query_shape(
                    103,
                    format!("chat_info[{i}].answer must be a string"),
                    started,
                ));
            };
            let key = match Self::key(tenant, model, msgs, namespace) {
                Ok(k) => k,
                Err(e) => {
                    return ok(query_shape(
                        103,
                        format!("chat_info[{i}].query: {e}"),
                        started,
                    ))
                }
            };
            pairs.push((key, answer));
        }
        let Some(cache) = self.cache.get() else {
            return write_error(
                301,
                "the cache is not available: it is still loading or failed to load (see /readyz and the log)",
            );
        };
        let policy = tenant.policy();
        if policy.mode == CacheMode::Off {
            return write_error(
                301,
                format!("tenant {} has caching off (cache mode off)", tenant.name()),
            );
        }
        let texts: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k.semantic)
            .map(|(k, _)| k.embed_text.clone())
            .collect();
        let mut vectors = match cache.embed_many(&texts, self.embed_batch).await {
            Ok(v) => v.into_iter(),
            Err(e) => {
                return write_error(302, format!("embedding failed, nothing was written: {e}"))
            }
        };
        let now = now_ms();
        let entries: Vec<NewEntry> = pairs
            .into_iter()
            .map(|(k, answer)| {
                let embedding = if k.semantic { vectors.next() } else { None };
                api_entry(tenant.name(), policy, &k, model, answer, embedding, now)
            })
            .collect();
        let count = entries.len();
        match cache.insert_now(entries).await {
            Ok(_) => {
                tracing::info!(
                    actor,
                    tenant = tenant.name(),
                    model,
                    count,
                    "modelcache insert"
                );
                ok(json!({"errorCode": 0, "errorDesc": "", "writeStatus": "success"}))
            }
            Err(e) => write_error(302, format!("the store failed, nothing was written: {e}")),
        }
    }

    async fn mc_remove(
        &self,
        obj: &Map<String, Value>,
        tenant: &Tenant,
        model: &str,
        actor: &str,
    ) -> Resp {
        let remove_type =
            match obj.get("remove_type") {
                Some(Value::String(t)) => t.as_str(),
                _ => return ok(query_shape(
                    103,
                    "remove_type is missing: use delete_by_id (with id_list) or truncate_by_model",
                    Instant::now(),
                )),
            };
        let target = match remove_type {
            "delete_by_id" => {
                let ids: Option<Vec<i64>> = obj.get("id_list").and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|v| {
                            v.as_i64()
                                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        })
                        .collect()
                });
                let well_formed = obj
                    .get("id_list")
                    .and_then(Value::as_array)
                    .is_some_and(|a| ids.as_ref().is_some_and(|i| i.len() == a.len()));
                match ids {
                    Some(ids) if well_formed => RemoveTarget::Ids(ids),
                    _ => {
                        return ok(query_shape(
                            103,
                            "id_list must be a list of entry ids (integers) for delete_by_id",
                            Instant::now(),
                        ))
                    }
                }
            }
            "truncate_by_model" => RemoveTarget::All {
                model: Some(model.to_string()),
            },
            other => {
                return remove_error(
                    401,
                    format!(
                        "remove_type {other:?} is not valid: use delete_by_id or truncate_by_model"
                    ),
                )
            }
        };
        let Some(cache) = self.cache.get() else {
            return remove_error(
                402,
                "the cache is not available: it is still loading or failed to load (see /readyz and the log)",
            );
        };
        // NOTE: delete_by_id is scoped like everything else: ids of another
        // tenant or another model are not this caller's to delete.
        let target = match target {
            RemoveTarget::Ids(ids) => {
                let (t, m) = (tenant.name().to_string(), model.to_string());
                let mine = cache
                    .with_store(move |s| {
                        let mut keep = Vec::new();
                        for id in ids {
                            if s.get(id)?.is_some_and(|e| e.tenant == t && e.model == m) {
                                keep.push(id);
                            }
                        }
                        Ok(keep)
                    })
                    .await;
                match mine {
                    Ok(ids) => RemoveTarget::Ids(ids),
                    Err(e) => return remove_error(402, format!("the store failed: {e}")),
                }
            }
            all => all,
        };
        match cache.remove(tenant.name(), target).await {
            Ok(removed) => {
                tracing::info!(
                    actor,
                    tenant = tenant.name(),
                    model,
                    remove_type,
                    deleted = removed.len(),
                    "modelcache remove"
                );
                ok(json!({
                    "errorCode": 0,
                    "errorDesc": "",
                    "response": {"status": "success", "delete_count": removed.len()},
                    "writeStatus": "success",
                }))
            }
            Err(e) => remove_error(402, format!("the store failed, nothing was removed: {e}")),
        }
    }

    async fn mc_register(&self, tenant: &Tenant, model: &str, actor: &str) -> Resp {
        let Some(cache) = self.cache.get() else {
            return register_error(
                "the cache is not available: it is still loading or failed to load (see /readyz and the log)",
            );
        };
        let created = cache.register_model(tenant.name(), model).await;
        match created {
            Ok(created) => {
                tracing::info!(
                    actor,
                    tenant = tenant.name(),
                    model,
                    created,
                    "modelcache register"
                );
                ok(json!({
                    "errorCode": 0,
                    "errorDesc": "",
                    "response": if created { "create_success" } else { "already_exists" },
                    "writeStatus": "success",
                }))
            }
            Err(e) => register_error(format!("the store failed: {e}")),
        }
    }
}
