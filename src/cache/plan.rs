//! The request-level decision: whether a request takes part in the cache, and
//! if so, under which key, which options and which write.
//!
//! Owns every rule that looks at a request as a whole: the route, the
//! tenant's mode, `Cache-Control`, the body's shape, the namespace header,
//! the temperature limit, the second key of API entries, the per-request
//! threshold and TTL. The proxy, the admin dry run, the ModelCache API and
//! `eval` all ask [`plan`]; none of them repeats a rule. It is pure: no I/O,
//! no clock, the same facts give the same plan.

use std::time::Duration;

use http::{header, HeaderMap};
use serde_json::Value;

use super::types::LookupOptions;
use crate::{
    config::{ApiEntriesMatch, Policy},
    keying::{key_with, without_sampling, CacheKey, Endpoint, Uncacheable},
};

/// Why a request was forwarded without a cache read or write: one bounded
/// metric label (`modelcache_bypass_total{reason}`) and a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Not a cacheable route (or method).
    Route,
    /// The caller matches no tenant, and unknown keys pass through.
    UnknownCaller,
    /// The tenant's cache is off.
    CacheOff,
    /// `Cache-Control: no-store`.
    NoStore,
    /// The cache has not loaded (or failed to).
    NotLoaded,
    /// The body is over `server.max_body_bytes`.
    BodyTooLarge,
    /// The body is not JSON.
    NotJson,
    /// An unusable `x-modelcache-namespace`.
    BadNamespace,
    /// A temperature above the tenant's `skip_when_temperature_above`.
    TooHot,
    /// The request cannot be keyed.
    Uncacheable(Uncacheable),
}

impl SkipReason {
    /// Every reason, for metrics created at zero.
    pub const ALL: [SkipReason; 15] = [
        SkipReason::Route,
        SkipReason::UnknownCaller,
        SkipReason::CacheOff,
        SkipReason::NoStore,
        SkipReason::NotLoaded,
        SkipReason::BodyTooLarge,
        SkipReason::NotJson,
        SkipReason::BadNamespace,
        SkipReason::TooHot,
        SkipReason::Uncacheable(Uncacheable::NotAnObject),
        SkipReason::Uncacheable(Uncacheable::NoModel),
        SkipReason::Uncacheable(Uncacheable::BadMessages),
        SkipReason::Uncacheable(Uncacheable::PromptNotString),
        SkipReason::Uncacheable(Uncacheable::BadInput),
        SkipReason::Uncacheable(Uncacheable::Stateful),
    ];

    /// A short stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Route => "route",
            SkipReason::UnknownCaller => "unknown_caller",
            SkipReason::CacheOff => "cache_off",
            SkipReason::NoStore => "no_store",
            SkipReason::NotLoaded => "not_loaded",
            SkipReason::BodyTooLarge => "body_too_large",
            SkipReason::NotJson => "not_json",
            SkipReason::BadNamespace => "bad_namespace",
            SkipReason::TooHot => "too_hot",
            SkipReason::Uncacheable(u) => u.as_str(),
        }
    }

    /// For people (the dry run's notes).
    pub fn describe(self) -> String {
        match self {
            SkipReason::Route => "not a cacheable route: the cache is skipped".into(),
            SkipReason::UnknownCaller => {
                "the caller matches no tenant: the cache is skipped".into()
            }
            SkipReason::CacheOff => "cache mode off: the cache is skipped".into(),
            SkipReason::NoStore => "Cache-Control: no-store: the cache is skipped".into(),
            SkipReason::NotLoaded => "the cache has not loaded: the cache is skipped".into(),
            SkipReason::BodyTooLarge => {
                "the body is over max_body_bytes: the cache is skipped".into()
            }
            SkipReason::NotJson => "the body is not JSON: the cache is skipped".into(),
            SkipReason::BadNamespace => "an unusable namespace: the cache is skipped".into(),
            SkipReason::TooHot => {
                "the temperature is above skip_when_temperature_above: the cache is skipped".into()
            }
            SkipReason::Uncacheable(u) => {
                format!("the request cannot be keyed ({u}): the cache is skipped")
            }
        }
    }
}

/// `Cache-Control` directives a client may send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
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

/// A request's body as the front end read it.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// Read whole and parsed.
    Json(&'a Value),
    /// Read whole; not JSON.
    NotJson,
    /// Over the body limit: streamed through unread.
    TooLarge,
}

/// The namespace a request asks for (`x-modelcache-namespace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace<'a> {
    /// None asked for.
    None,
    /// A usable one.
    Named(&'a str),
    /// Sent, but unusable.
    Invalid,
}

impl<'a> Namespace<'a> {
    /// From a raw header or field value.
    pub fn parse(raw: Option<&'a [u8]>) -> Namespace<'a> {
        match raw {
            None => Namespace::None,
            Some(v) => crate::keying::namespace(v).map_or(Namespace::Invalid, Namespace::Named),
        }
    }
}

/// Everything about one request that the plan depends on: what any front
/// end (HTTP, the dry run, the ModelCache API, `eval`) can state.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The cacheable route, if it is one.
    pub endpoint: Option<Endpoint>,
    /// The body.
    pub body: Body<'a>,
    /// `Cache-Control`.
    pub cache_control: CacheControl,
    /// `x-modelcache-namespace`.
    pub namespace: Namespace<'a>,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// `anthropic-version` and `anthropic-beta`: what shape of Messages
    /// answer, and which beta features, the client asked for.
    pub anthropic: [Option<&'a str>; 2],
    /// `x-modelcache-threshold`: a stricter similarity for this request.
    pub min_similarity: Option<f32>,
    /// `x-modelcache-ttl`: a shorter life for this request's answer.
    pub ttl: Option<Duration>,
    /// Whether the request samples (an API request, whose temperature is
    /// OpenAI's default 1 when absent), so that the tenant's temperature
    /// limit applies; a ModelCache API query states no sampling at all.
    pub samples: bool,
}

impl<'a> Facts<'a> {
    /// The facts of a chat body with no headers (the dry run, `eval`).
    pub fn chat(body: &'a Value) -> Facts<'a> {
        Facts {
            endpoint: Some(Endpoint::Chat),
            body: Body::Json(body),
            cache_control: CacheControl::default(),
            namespace: Namespace::None,
            query: None,
            anthropic: [None, None],
            min_similarity: None,
            ttl: None,
            samples: true,
        }
    }

    /// The facts of an HTTP request on `endpoint` with `headers`, `query`
    /// and `body`.
    pub fn from_http(
        endpoint: Option<Endpoint>,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
        body: Body<'a>,
    ) -> Facts<'a> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Facts {
            endpoint,
            body,
            cache_control: CacheControl::parse(headers),
            namespace: Namespace::parse(
                headers.get("x-modelcache-namespace").map(|v| v.as_bytes()),
            ),
            query,
            anthropic: [text("anthropic-version"), text("anthropic-beta")],
            min_similarity: text("x-modelcache-threshold").and_then(|v| v.trim().parse().ok()),
            ttl: text("x-modelcache-ttl")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
            samples: true,
        }
    }
}

/// What to do with a request the cache takes part in.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The request's key.
    pub key: CacheKey,
    /// A second key to look up after a miss, serving only entries written
    /// through the ModelCache API (`api_entries_match`): the request without
    /// its sampling parameters.
    pub api_key: Option<CacheKey>,
    /// The options of both lookups.
    pub options: LookupOptions,
    /// Whether to look up at all (`false`: the mode writes only, or
    /// `Cache-Control: no-cache`).
    pub reads: bool,
    /// How long the answer lives, if it is written.
    pub write: Option<Duration>,
}

/// The request-level decision.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Forward untouched: no cache read or write.
    Skip(SkipReason),
    /// Take part in the cache.
    Lookup(Box<Lookup>),
}

/// Whether the request's temperature (1, OpenAI's default, when absent) is
/// above the tenant's limit.
fn too_hot(body: &Value, policy: &Policy) -> bool {
    policy.skip_when_temperature_above.is_some_and(|max| {
        let t = body
            .get("temperature")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        t > max
    })
}

/// Decides what the cache does with a request of a tenant with `policy`
/// (`None`: the caller matches no tenant), given whether the cache has
/// `loaded`. The first reason to skip that applies wins, in the order a
/// reader would check them.
pub fn plan(policy: Option<&Policy>, loaded: bool, facts: &Facts<'_>) -> Plan {
    let skip = Plan::Skip;
    let Some(policy) = policy else {
        return skip(SkipReason::UnknownCaller);
    };
    let Some(endpoint) = facts.endpoint else {
        return skip(SkipReason::Route);
    };
    if !policy.mode.reads() && !policy.mode.writes() {
        return skip(SkipReason::CacheOff);
    }
    if facts.cache_control.no_store {
        return skip(SkipReason::NoStore);
    }
    if !loaded {
        return skip(SkipReason::NotLoaded);
    }
    let body = match facts.body {
        Body::Json(v) => v,
        Body::NotJson => return skip(SkipReason::NotJson),
        Body::TooLarge => return skip(SkipReason::BodyTooLarge),
    };
    let namespace = match facts.namespace {
        Namespace::None => None,
        Namespace::Named(n) => Some(n),
        Namespace::Invalid => return skip(SkipReason::BadNamespace),
    };
    if facts.samples && endpoint.samples() && too_hot(body, policy) {
        return skip(SkipReason::TooHot);
    }
    let key_options = crate::keying::KeyOptions {
        // NOTE: an upstream may answer by the query (`?api-version=` on
        // Azure), so requests with another query never share an answer.
        query: facts.query,
        anthropic_version: facts.anthropic[0],
        anthropic_beta: facts.anthropic[1],
        ..policy.key_options(namespace)
    };
    let key = match key_with(endpoint, body, &key_options) {
        Ok(k) => k,
        Err(u) => return skip(SkipReason::Uncacheable(u)),
    };
    // NOTE: entries inserted through the ModelCache API carry no parameters;
    // this tenant lets them answer requests that differ from theirs only in
    // sampling parameters.
    let api_key = (policy.api_entries_match == ApiEntriesMatch::AnySamplingParams)
        .then(|| without_sampling(body))
        .flatten()
        .and_then(|b| key_with(endpoint, &b, &key_options).ok())
        .filter(|k| k.partition != key.partition);
    Plan::Lookup(Box::new(Lookup {
        key,
        api_key,
        options: LookupOptions {
            max_age: facts.cache_control.max_age,
            min_similarity: facts.min_similarity,
            ..LookupOptions::for_policy(policy)
        },
        reads: policy.mode.reads() && !facts.cache_control.no_cache,
        // NOTE: a request may shorten its answer's life, never lengthen it.
        write: policy
            .mode
            .writes()
            .then(|| facts.ttl.map_or(policy.ttl, |t| t.min(policy.ttl))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheMode;
    use http::HeaderValue;
    use serde_json::json;

    fn policy(f: impl Fn(&mut Policy)) -> Policy {
        let mut p = crate::config::load(None, Vec::new(), &crate::config::Overrides::default())
            .expect("the embedded defaults load")
            .cache
            .policy;
        f(&mut p);
        p
    }

    fn body() -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "What is Rust?"}],
               "temperature": 0.2})
    }

    fn skipped(p: Option<&Policy>, loaded: bool, f: &Facts<'_>) -> Option<SkipReason> {
        match plan(p, loaded, f) {
            Plan::Skip(r) => Some(r),
            Plan::Lookup(_) => None,
        }
    }

    #[test]
    fn each_reason_to_skip_in_its_order() {
        let b = body();
        let hot = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                         "temperature": 1.5});
        let no_model = json!({"messages": []});
        let on = policy(|_| {});
        let off = policy(|p| p.mode = CacheMode::Off);
        let cool = policy(|p| p.skip_when_temperature_above = Some(1.0));
        let cool_half = policy(|p| p.skip_when_temperature_above = Some(0.1));
        let unsampled = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let chat = Facts::chat(&b);
        type Case<'a> = (
            &'a str,
            Option<&'a Policy>,
            bool,
            Facts<'a>,
            Option<SkipReason>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "unknown caller",
                None,
                true,
                chat,
                Some(SkipReason::UnknownCaller),
            ),
            (
                "route",
                Some(&on),
                true,
                Facts {
                    endpoint: None,
                    ..chat
                },
                Some(SkipReason::Route),
            ),
            (
                "mode off",
                Some(&off),
                true,
                chat,
                Some(SkipReason::CacheOff),
            ),
            (
                "no-store",
                Some(&on),
                true,
                Facts {
                    cache_control: CacheControl {
                        no_store: true,
                        ..Default::default()
                    },
                    ..chat
                },
                Some(SkipReason::NoStore),
            ),
            (
                "not loaded",
                Some(&on),
                false,
                chat,
                Some(SkipReason::NotLoaded),
            ),
            (
                "not JSON",
                Some(&on),
                true,
                Facts {
                    body: Body::NotJson,
                    ..chat
                },
                Some(SkipReason::NotJson),
            ),
            (
                "too large",
                Some(&on),
                true,
                Facts {
                    body: Body::TooLarge,
                    ..chat
                },
                Some(SkipReason::BodyTooLarge),
            ),
            (
                "bad namespace",
                Some(&on),
                true,
                Facts {
                    namespace: Namespace::Invalid,
                    ..chat
                },
                Some(SkipReason::BadNamespace),
            ),
            (
                "too hot",
                Some(&cool),
                true,
                Facts::chat(&hot),
                Some(SkipReason::TooHot),
            ),
            ("cool enough", Some(&cool), true, chat, None),
            ("no limit", Some(&on), true, Facts::chat(&hot), None),
            // No temperature is OpenAI's 1; a ModelCache query samples not.
            (
                "default temperature",
                Some(&cool_half),
                true,
                Facts::chat(&unsampled),
                Some(SkipReason::TooHot),
            ),
            (
                "a ModelCache query",
                Some(&cool_half),
                true,
                Facts {
                    samples: false,
                    ..Facts::chat(&unsampled)
                },
                None,
            ),
            (
                "no model",
                Some(&on),
                true,
                Facts::chat(&no_model),
                Some(SkipReason::Uncacheable(Uncacheable::NoModel)),
            ),
            // The first reason wins: mode off before a body that is not JSON.
            (
                "first wins",
                Some(&off),
                false,
                Facts {
                    body: Body::NotJson,
                    ..chat
                },
                Some(SkipReason::CacheOff),
            ),
        ];
        for (name, p, loaded, facts, want) in cases {
            assert_eq!(skipped(p, loaded, &facts), want, "{name}");
        }
    }

    #[test]
    fn a_lookup_carries_the_modes_reads_and_writes_and_the_requests_limits() {
        let b = body();
        let chat = Facts::chat(&b);
        let ttl = Duration::from_secs(3600);
        let cases = [
            (
                CacheMode::ReadWrite,
                CacheControl::default(),
                None,
                true,
                Some(ttl),
            ),
            (
                CacheMode::ReadOnly,
                CacheControl::default(),
                None,
                true,
                None,
            ),
            (
                CacheMode::WriteOnly,
                CacheControl::default(),
                None,
                false,
                Some(ttl),
            ),
            (
                CacheMode::ReadWrite,
                CacheControl {
                    no_cache: true,
                    ..Default::default()
                },
                None,
                false,
                Some(ttl),
            ),
            // A request may shorten the life of its answer, not lengthen it.
            (
                CacheMode::ReadWrite,
                CacheControl::default(),
                Some(60),
                true,
                Some(Duration::from_secs(60)),
            ),
            (
                CacheMode::ReadWrite,
                CacheControl::default(),
                Some(86_400),
                true,
                Some(ttl),
            ),
        ];
        for (mode, cc, asked, reads, write) in cases {
            let p = policy(|p| {
                p.mode = mode;
                p.ttl = ttl;
            });
            let facts = Facts {
                cache_control: cc,
                ttl: asked.map(Duration::from_secs),
                ..chat
            };
            let Plan::Lookup(l) = plan(Some(&p), true, &facts) else {
                panic!("{mode:?} skipped");
            };
            assert_eq!(
                (l.reads, l.write),
                (reads, write),
                "{mode:?} {cc:?} {asked:?}"
            );
        }
    }

    #[test]
    fn headers_become_facts() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("No-Cache, max-age=60"),
        );
        h.insert("x-modelcache-threshold", HeaderValue::from_static(" 0.97 "));
        h.insert("x-modelcache-ttl", HeaderValue::from_static("120"));
        h.insert("x-modelcache-namespace", HeaderValue::from_static("team-a"));
        let b = body();
        let f = Facts::from_http(Some(Endpoint::Chat), &h, Some("v=1"), Body::Json(&b));
        assert!(f.cache_control.no_cache && !f.cache_control.no_store);
        assert_eq!(f.cache_control.max_age, Some(Duration::from_secs(60)));
        assert_eq!(f.min_similarity, Some(0.97));
        assert_eq!(f.ttl, Some(Duration::from_secs(120)));
        assert_eq!(f.namespace, Namespace::Named("team-a"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-modelcache-namespace", HeaderValue::from_static("a b"));
        let f = Facts::from_http(None, &h, None, Body::NotJson);
        assert!(f.cache_control.no_store);
        assert_eq!(f.namespace, Namespace::Invalid);
        let Plan::Lookup(l) = plan(
            Some(&policy(|_| {})),
            true,
            &Facts {
                cache_control: CacheControl {
                    max_age: Some(Duration::from_secs(5)),
                    ..Default::default()
                },
                min_similarity: Some(0.99),
                ..Facts::chat(&b)
            },
        ) else {
            panic!("skipped");
        };
        assert_eq!(l.options.max_age, Some(Duration::from_secs(5)));
        assert_eq!(l.options.min_similarity, Some(0.99));
    }

    #[test]
    fn the_query_and_namespace_shape_the_key_and_the_api_key_drops_sampling() {
        let b = body();
        let any = policy(|p| p.api_entries_match = ApiEntriesMatch::AnySamplingParams);
        let exact = policy(|p| p.api_entries_match = ApiEntriesMatch::DefaultParams);
        let key = |p: &Policy, f: Facts<'_>| match plan(Some(p), true, &f) {
            Plan::Lookup(l) => *l,
            Plan::Skip(r) => panic!("skipped: {r:?}"),
        };
        let plain = key(&any, Facts::chat(&b));
        let queried = key(
            &any,
            Facts {
                query: Some("api-version=1"),
                ..Facts::chat(&b)
            },
        );
        let named = key(
            &any,
            Facts {
                namespace: Namespace::Named("n"),
                ..Facts::chat(&b)
            },
        );
        assert_ne!(plain.key.partition, queried.key.partition);
        assert_ne!(plain.key.partition, named.key.partition);
        assert_eq!(plain.key.embed_text, queried.key.embed_text);
        // The API key is the request without temperature: another partition.
        let api = plain.api_key.expect("a second key");
        assert_ne!(api.partition, plain.key.partition);
        assert_eq!(api.embed_text, plain.key.embed_text);
        // Not asked for, or nothing to drop: no second key.
        assert!(key(&exact, Facts::chat(&b)).api_key.is_none());
        let bare =
            json!({"model": "m", "messages": [{"role": "user", "content": "What is Rust?"}]});
        assert!(key(&any, Facts::chat(&bare)).api_key.is_none());
    }
}
