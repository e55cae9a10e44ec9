//! The cache key: which stored answers a request may be served from.
//!
//! Owns turning a parsed request body into a partition (matched exactly) and a
//! text (matched by meaning), as DESIGN.md §2 lays out. It must never decide
//! whether a lookup happens (that is policy) and never touch storage.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub mod anthropic;
pub mod inputs;
pub mod responses;

/// The cacheable endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions` with a string prompt.
    Completions,
    /// `POST /v1/embeddings`: each input matched exactly, never by meaning.
    Embeddings,
    /// `POST /v1/messages`, Anthropic's Messages API.
    Messages,
    /// `POST /v1/responses`, OpenAI's Responses API.
    Responses,
}

impl Endpoint {
    /// Maps a request path onto a cacheable endpoint.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/messages" => Some(Endpoint::Messages),
            "/v1/responses" => Some(Endpoint::Responses),
            _ => None,
        }
    }

    /// Stable name, used in keys and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
        }
    }

    /// Whether requests on it sample, so that a temperature limit applies.
    pub fn samples(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }
}

/// Why a request on a cacheable route is still not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Uncacheable {
    /// The body is not a JSON object.
    #[error("body is not a JSON object")]
    NotAnObject,
    /// No string `model`.
    #[error("no model")]
    NoModel,
    /// `messages` missing or malformed.
    #[error("messages missing or malformed")]
    BadMessages,
    /// A completions prompt that is not one string.
    #[error("prompt is not a single string")]
    PromptNotString,
    /// An embeddings `input` that is not a string, a token array, or a
    /// non-empty list of either.
    #[error("input is not a string, a token array or a list of them")]
    BadInput,
    /// A Responses request that depends on the upstream's state
    /// (`previous_response_id`, `conversation`) or runs in the background.
    #[error("the answer depends on state the upstream holds")]
    Stateful,
}

impl Uncacheable {
    /// A short stable name, for a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Uncacheable::NotAnObject => "not_an_object",
            Uncacheable::NoModel => "no_model",
            Uncacheable::BadMessages => "bad_messages",
            Uncacheable::PromptNotString => "prompt_not_string",
            Uncacheable::BadInput => "bad_input",
            Uncacheable::Stateful => "stateful",
        }
    }
}

/// Everything the cache needs to know about one request.
#[derive(Debug, Clone)]
pub struct CacheKey {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The requested model, verbatim.
    pub model: String,
    /// Hex SHA-256 of endpoint, model, answer-shaping parameters and the turns
    /// that are matched exactly. Requests may share answers only within one.
    pub partition: String,
    /// The key text, ModelCache's way: `role###content` joined with `|||`.
    pub text: String,
    /// The text that is embedded: the user turns (system turns are in the partition).
    pub embed_text: String,
    /// Whether semantic matching is allowed (false: exact only).
    pub semantic: bool,
    /// `stream: true`
    pub stream: bool,
    /// `stream_options.include_usage: true`
    pub include_usage: bool,
    /// The answer-shaping parameters, canonical JSON (kept with the entry).
    pub params: String,
    /// Hash of the partition and the turns of the text, each turn
    /// length-prefixed (never of `text`, whose separators a turn's content
    /// could forge): the exact-match key.
    pub exact_hash: String,
}

impl CacheKey {
    /// First 8 bytes of the partition hash, as the vector index's filter tag.
    pub fn partition_tag(&self) -> u64 {
        partition_tag(&self.partition)
    }
}

/// The contents of the turns of a key text (`role###content` joined with
/// `|||`) that are compared by meaning: user and plain assistant turns, or a
/// completion's prompt. System turns are matched exactly.
///
/// A content holding `|||` is glued back to its turn, unless what follows
/// looks like a turn of its own; such a text then parses into more turns
/// than it has, and its turns do not line up with another's (judged a miss).
pub fn meaning_turns(text: &str) -> Vec<&str> {
    const ROLES: [&str; 6] = [
        "system###",
        "developer###",
        "user###",
        "assistant###",
        "prompt###",
        "tool###",
    ];
    let mut turns: Vec<(usize, usize, bool)> = Vec::new();
    let mut at = 0;
    for piece in text.split("|||") {
        let end = at + piece.len();
        let role = ROLES.iter().find(|r| piece.starts_with(**r));
        match (role, turns.last_mut()) {
            (None, Some(last)) => last.1 = end,
            (role, _) => {
                let (skip, meaning) = match role {
                    Some(r) => (
                        r.len(),
                        !matches!(*r, "system###" | "developer###" | "tool###"),
                    ),
                    None => (0, true),
                };
                turns.push((at + skip, end, meaning));
            }
        }
        at = end + 3;
    }
    turns
        .into_iter()
        .filter(|t| t.2)
        .filter_map(|(a, b, _)| text.get(a..b))
        .collect()
}

/// First 8 bytes of a hex partition hash.
pub fn partition_tag(partition: &str) -> u64 {
    u64::from_str_radix(partition.get(..16).unwrap_or("0"), 16).unwrap_or(0)
}

/// The exact-match key of a partition and the length-prefixed turns of a
/// text (as `push_exact` writes them).
pub fn exact_hash(partition: &str, turns: &str) -> String {
    let mut h = Sha256::new();
    for piece in [partition, turns] {
        h.update((piece.len() as u64).to_le_bytes());
        h.update(piece.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A request's query string in a canonical form for the partition: pairs in
/// name order (the values of one name keep their order), each length-prefixed.
/// `None` when there is no pair.
pub fn canonical_query(query: &str) -> Option<String> {
    // NOTE: raw bytes, not percent-decoded: two spellings of one value may
    // split the cache, but two different values can never share a partition.
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or((p, p), |(n, _)| (n, p)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    for (i, (_, pair)) in pairs.into_iter().enumerate() {
        push_exact(&mut out, i, "q", pair);
    }
    Some(out)
}

// NOTE: these request fields never change the answer, so requests that differ
// only in them share entries. Every other field does: an unknown parameter
// isolates rather than risks a wrong answer.
const IGNORED: [&str; 10] = [
    "messages",
    "prompt",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];

/// The sampling parameters: they change how an answer is drawn, not what it
/// must contain or how it is shaped.
pub const SAMPLING_PARAMS: [&str; 5] = [
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
];

/// The request body without its sampling parameters, if it has any: the body
/// whose key entries inserted through the ModelCache API are stored under.
pub fn without_sampling(body: &Value) -> Option<Value> {
    let obj = body.as_object()?;
    if !SAMPLING_PARAMS
        .iter()
        .any(|p| obj.get(*p).is_some_and(|v| !v.is_null()))
    {
        return None;
    }
    let mut out = obj.clone();
    for p in SAMPLING_PARAMS {
        out.remove(p);
    }
    Some(Value::Object(out))
}

/// Which turns of a chat are compared by meaning. Every other turn is matched
/// exactly, and system prompts always are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextMode {
    /// The system and user turns make up the key, as in ModelCache: user turns
    /// are compared by meaning, system turns exactly.
    #[default]
    SystemAndUser,
    /// Only the last user turn is compared by meaning; earlier turns exactly.
    LastUser,
    /// User and plain assistant turns are compared by meaning.
    All,
}

impl TextMode {
    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<TextMode> {
        match s {
            "system_and_user" => Some(TextMode::SystemAndUser),
            "last_user" => Some(TextMode::LastUser),
            "all" => Some(TextMode::All),
            _ => None,
        }
    }
}

/// Longest namespace accepted (`x-modelcache-namespace`), in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 256;

/// A namespace as the header gives it, if usable: 1 to
/// [`MAX_NAMESPACE_BYTES`] bytes of visible ASCII (no space, no tab).
pub fn namespace(raw: &[u8]) -> Option<&str> {
    let ok =
        !raw.is_empty() && raw.len() <= MAX_NAMESPACE_BYTES && raw.iter().all(u8::is_ascii_graphic);
    ok.then(|| std::str::from_utf8(raw).ok()).flatten()
}

/// Tenant policy and request headers that shape a key.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyOptions<'a> {
    /// Which turns are compared by meaning.
    pub text: TextMode,
    /// Chats with more messages than this are matched exactly only.
    pub max_messages: Option<usize>,
    /// A sub-partition inside the tenant (`x-modelcache-namespace`).
    pub namespace: Option<&'a str>,
    /// The request's query string (`?api-version=...`), raw; part of the
    /// partition, never of the embedded text.
    pub query: Option<&'a str>,
    /// `anthropic-version`: the shape of a Messages answer.
    pub anthropic_version: Option<&'a str>,
    /// `anthropic-beta`: features that can change a Messages answer.
    pub anthropic_beta: Option<&'a str>,
}

/// Builds the key of a request body with the default options.
pub fn key_for(endpoint: Endpoint, body: &Value) -> Result<CacheKey, Uncacheable> {
    key_with(endpoint, body, &KeyOptions::default())
}

/// Builds the key of a request body.
pub fn key_with(
    endpoint: Endpoint,
    body: &Value,
    opts: &KeyOptions<'_>,
) -> Result<CacheKey, Uncacheable> {
    // NOTE: a Messages or Responses request is keyed as the chat it amounts
    // to, under its own endpoint name, so that it never shares a chat's
    // partition.
    let chat_shaped;
    let body = match endpoint {
        Endpoint::Messages => {
            chat_shaped = anthropic::as_chat(body)?;
            &chat_shaped
        }
        Endpoint::Responses => {
            chat_shaped = responses::as_chat(body)?;
            &chat_shaped
        }
        _ => body,
    };
    let obj = body.as_object().ok_or(Uncacheable::NotAnObject)?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .ok_or(Uncacheable::NoModel)?
        .to_string();
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut params = Map::new();
    for (k, v) in obj {
        // NOTE: an embeddings request's inputs are keyed one by one, and
        // the encoding only changes how the same vector is written.
        let per_input =
            endpoint == Endpoint::Embeddings && matches!(k.as_str(), "input" | "encoding_format");
        if !per_input && !IGNORED.contains(&k.as_str()) && !v.is_null() {
            params.insert(k.clone(), v.clone());
        }
    }
    let params = canonical(&Value::Object(params));

    let mut exact_turns = String::new();
    // The turns of `text`, length-prefixed: what the exact hash is made of.
    let mut text_turns = String::new();
    // Where the turns compared by meaning sit, and their roles.
    let mut meaning_turns: Vec<(usize, &str)> = Vec::new();
    let (text, embed_text, semantic) = match endpoint {
        Endpoint::Chat | Endpoint::Messages | Endpoint::Responses => {
            let msgs = obj
                .get("messages")
                .and_then(Value::as_array)
                .ok_or(Uncacheable::BadMessages)?;
            if msgs.is_empty() {
                return Err(Uncacheable::BadMessages);
            }
            let mut parts = Vec::new();
            let mut embed_parts = Vec::new();
            let mut semantic = opts.max_messages.is_none_or(|n| msgs.len() <= n);
            let last_user = msgs
                .iter()
                .rposition(|m| m.get("role") == Some(&Value::from("user")));
            for (i, m) in msgs.iter().enumerate() {
                let m = m.as_object().ok_or(Uncacheable::BadMessages)?;
                let role = m
                    .get("role")
                    .and_then(Value::as_str)
                    .ok_or(Uncacheable::BadMessages)?;
                match role {
                    "system" | "developer" | "user" => {
                        let (content, text_only, hashed) =
                            content_text(m.get("content")).ok_or(Uncacheable::BadMessages)?;
                        // NOTE: content given as a list of parts is tagged apart
                        // from a string, so that a text part cannot pass for an
                        // image part, nor a string for a list.
                        let tag = match hashed {
                            Hashed::Same => role.to_string(),
                            Hashed::Parts(_) => format!("{role}[]"),
                        };
                        let hashed = match &hashed {
                            Hashed::Same => content.as_str(),
                            Hashed::Parts(p) => p.as_str(),
                        };
                        semantic &= text_only;
                        // Extra fields (`name`, ...) are matched exactly.
                        let extras: Map<String, Value> = m
                            .iter()
                            .filter(|(k, _)| *k != "role" && *k != "content")
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        if !extras.is_empty() {
                            push_exact(
                                &mut exact_turns,
                                i,
                                "extra",
                                &canonical(&Value::Object(extras)),
                            );
                        }
                        let by_meaning = role == "user"
                            && (opts.text != TextMode::LastUser || Some(i) == last_user);
                        if by_meaning {
                            embed_parts.push(content.clone());
                            meaning_turns.push((i, role));
                        } else {
                            // NOTE: a system prompt changes what a right answer is,
                            // so it is matched exactly, never by meaning. It stays
                            // out of the embedding: a long shared system prompt would
                            // otherwise make unrelated questions look alike.
                            push_exact(&mut exact_turns, i, &tag, hashed);
                        }
                        push_exact(&mut text_turns, i, &tag, hashed);
                        parts.push(format!("{role}###{content}"));
                    }
                    "assistant"
                        if opts.text == TextMode::All
                            && m.keys().all(|k| k == "role" || k == "content")
                            && matches!(m.get("content"), Some(Value::String(_))) =>
                    {
                        let content = m.get("content").and_then(Value::as_str).unwrap_or("");
                        embed_parts.push(content.to_string());
                        meaning_turns.push((i, "assistant"));
                        push_exact(&mut text_turns, i, "assistant", content);
                        parts.push(format!("assistant###{content}"));
                    }
                    _ => {
                        // Assistant, tool and function turns: matched exactly, in place.
                        if role != "assistant"
                            || m.get("tool_calls").is_some_and(|t| !t.is_null())
                            || m.get("function_call").is_some_and(|t| !t.is_null())
                        {
                            semantic = false;
                        }
                        push_exact(
                            &mut exact_turns,
                            i,
                            "turn",
                            &canonical(&Value::Object(m.clone())),
                        );
                    }
                }
            }
            if parts.is_empty() {
                return Err(Uncacheable::BadMessages);
            }
            (parts.join("|||"), embed_parts.join("\n"), semantic)
        }
        Endpoint::Completions => {
            let p = obj
                .get("prompt")
                .and_then(Value::as_str)
                .ok_or(Uncacheable::PromptNotString)?;
            push_exact(&mut text_turns, 0, "prompt", p);
            (format!("prompt###{p}"), p.to_string(), true)
        }
        Endpoint::Embeddings => {
            let all = inputs::of(obj.get("input"))?;
            let mut texts = Vec::new();
            for (i, input) in all.iter().enumerate() {
                let (tag, text) = input.tagged();
                push_exact(&mut text_turns, i, tag, &text);
                texts.push(format!("{tag}###{text}"));
            }
            (texts.join("|||"), String::new(), false)
        }
    };
    // NOTE: one user turn compared by meaning sits in the one gap the exactly
    // matched turns leave; any other layout (two user turns in a row, plain
    // assistant turns in `all`) is spelled out, so that one turn holding a
    // forged `|||user###` is never in the partition of two turns. Only then,
    // so that keys of single questions keep their hash.
    let layout = match meaning_turns.as_slice() {
        [] | [(_, "user")] => None,
        turns => {
            let mut out = String::new();
            for (i, role) in turns {
                push_exact(&mut out, *i, "meaning", role);
            }
            Some(out)
        }
    };

    let mut h = Sha256::new();
    for piece in [endpoint.as_str(), &model, &params, &exact_turns] {
        h.update((piece.len() as u64).to_le_bytes());
        h.update(piece.as_bytes());
    }
    // NOTE: each only when set, so that keys without one keep their hash;
    // each named, so that one cannot pass for another.
    let query = opts.query.and_then(canonical_query);
    for (name, piece) in [
        ("namespace", opts.namespace),
        ("query", query.as_deref()),
        ("layout", layout.as_deref()),
        ("anthropic-version", opts.anthropic_version),
        ("anthropic-beta", opts.anthropic_beta),
    ] {
        if let Some(piece) = piece {
            h.update(name.as_bytes());
            h.update((piece.len() as u64).to_le_bytes());
            h.update(piece.as_bytes());
        }
    }
    let partition = hex::encode(h.finalize());
    Ok(CacheKey {
        endpoint,
        model,
        exact_hash: exact_hash(&partition, &text_turns),
        partition,
        semantic: semantic && !embed_text.trim().is_empty(),
        text,
        embed_text,
        stream,
        include_usage,
        params,
    })
}

/// Appends one exactly-matched piece, length-prefixed so pieces cannot run together.
fn push_exact(out: &mut String, index: usize, tag: &str, piece: &str) {
    out.push_str(&format!("{index}:{tag}:{}:{piece}", piece.len()));
}

/// How a message's content is hashed.
enum Hashed {
    /// As its text (a string, or no content).
    Same,
    /// A list of parts: each part tagged by kind and length-prefixed.
    Parts(String),
}

/// The text of a message's content, whether it was text only, and how it is hashed.
fn content_text(content: Option<&Value>) -> Option<(String, bool, Hashed)> {
    match content? {
        Value::String(s) => Some((s.clone(), true, Hashed::Same)),
        Value::Array(parts) => {
            let mut out = Vec::new();
            let mut hashed = String::new();
            let mut text_only = true;
            for (i, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => {
                        push_exact(&mut hashed, i, "text", t);
                        out.push(t.clone());
                    }
                    _ => {
                        // NOTE: images, audio and files are kept verbatim in the key
                        // text so that only the identical request hits.
                        text_only = false;
                        let c = canonical(p);
                        push_exact(&mut hashed, i, "part", &c);
                        out.push(c);
                    }
                }
            }
            Some((out.join("\n"), text_only, Hashed::Parts(hashed)))
        }
        Value::Null => Some((String::new(), true, Hashed::Same)),
        _ => None,
    }
}

/// Canonical JSON: sorted keys, and numbers spelled one way (`1.0` = `1`, `1e2` = `100`).
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[*k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    out.push_str(&(f as i64).to_string());
                } else {
                    out.push_str(&f.to_string());
                }
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(v: Value) -> CacheKey {
        key_for(Endpoint::Chat, &v).unwrap()
    }

    #[test]
    fn joins_system_and_user_turns_modelcache_style() {
        let k = key(json!({"model":"m","messages":[
            {"role":"system","content":"You are a Python assistant."},
            {"role":"user","content":"hello"}]}));
        assert_eq!(
            k.text,
            "system###You are a Python assistant.|||user###hello"
        );
        assert!(k.semantic);
    }

    #[test]
    fn the_turns_compared_by_meaning_come_back_out_of_the_key_text() {
        let chat = key(json!({"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"Load sales.csv"},
            {"role":"assistant","content":"Done."},
            {"role":"user","content":"Plot it as a bar chart"}]}));
        assert_eq!(
            meaning_turns(&chat.text),
            ["Load sales.csv", "Plot it as a bar chart"]
        );
        let one = key(json!({"model":"m","messages":[{"role":"user","content":"a ||| b"}]}));
        assert_eq!(
            meaning_turns(&one.text),
            ["a ||| b"],
            "content keeps its own |||"
        );
        let forged =
            key(json!({"model":"m","messages":[{"role":"user","content":"a|||user###b"}]}));
        assert_eq!(
            meaning_turns(&forged.text).len(),
            2,
            "a forged turn parses apart, and lines up with no real one-turn key"
        );
        let all = key_with(
            Endpoint::Chat,
            &json!({"model":"m","messages":[
                {"role":"user","content":"q1"},{"role":"assistant","content":"a1"},
                {"role":"user","content":"q2"}]}),
            &KeyOptions {
                text: TextMode::All,
                ..KeyOptions::default()
            },
        )
        .unwrap();
        assert_eq!(meaning_turns(&all.text), ["q1", "a1", "q2"]);
        let prompt = key_for(
            Endpoint::Completions,
            &json!({"model":"m","prompt":"Say hi"}),
        )
        .unwrap();
        assert_eq!(meaning_turns(&prompt.text), ["Say hi"]);
        assert!(meaning_turns("").len() <= 1);
    }

    #[test]
    fn system_prompts_are_matched_exactly_and_not_embedded() {
        let a = key(json!({"model":"m","messages":[
            {"role":"system","content":"You are terse."},{"role":"user","content":"q"}]}));
        let b = key(json!({"model":"m","messages":[
            {"role":"system","content":"You are verbose."},{"role":"user","content":"q"}]}));
        assert_ne!(a.partition, b.partition);
        assert_eq!(a.embed_text, "q");
    }

    #[test]
    fn key_order_and_float_spelling_do_not_matter() {
        let a = key(
            json!({"model":"m","temperature":1,"top_p":0.5,"messages":[{"role":"user","content":"q"}]}),
        );
        let b: Value = serde_json::from_str(
            r#"{"top_p":5e-1,"messages":[{"content":"q","role":"user"}],"temperature":1.0,"model":"m"}"#,
        )
        .unwrap();
        assert_eq!(a.partition, key(b).partition);
    }

    #[test]
    fn answer_shaping_parameters_split_partitions() {
        let base = json!({"model":"m","messages":[{"role":"user","content":"q"}]});
        let p0 = key(base.clone()).partition;
        for (k, v) in [
            ("temperature", json!(0.7)),
            ("max_tokens", json!(10)),
            ("seed", json!(1)),
            (
                "tools",
                json!([{"type":"function","function":{"name":"f"}}]),
            ),
            ("response_format", json!({"type":"json_object"})),
            ("some_future_param", json!(true)),
        ] {
            let mut b = base.clone();
            b[k] = v;
            assert_ne!(key(b).partition, p0, "{k} must split the partition");
        }
        let mut m = base.clone();
        m["model"] = json!("other");
        assert_ne!(key(m).partition, p0);
    }

    #[test]
    fn stream_and_user_fields_share_a_partition() {
        let a = key(json!({"model":"m","messages":[{"role":"user","content":"q"}]}));
        let b = key(
            json!({"model":"m","stream":true,"stream_options":{"include_usage":true},
            "user":"u1","messages":[{"role":"user","content":"q"}]}),
        );
        assert_eq!(a.partition, b.partition);
        assert_eq!(a.exact_hash, b.exact_hash);
        assert!(b.stream && b.include_usage);
    }

    #[test]
    fn assistant_turns_are_matched_exactly() {
        let a = key(json!({"model":"m","messages":[
            {"role":"user","content":"q"},{"role":"assistant","content":"a1"},{"role":"user","content":"more"}]}));
        let b = key(json!({"model":"m","messages":[
            {"role":"user","content":"q"},{"role":"assistant","content":"a2"},{"role":"user","content":"more"}]}));
        assert_eq!(a.text, b.text);
        assert_ne!(a.partition, b.partition);
        assert!(a.semantic);
    }

    #[test]
    fn images_and_tool_turns_are_exact_only() {
        let img = key(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"what is this"},
            {"type":"image_url","image_url":{"url":"data:x"}}]}]}));
        assert!(!img.semantic);
        assert!(img.text.contains("data:x"));
        let tool = key(json!({"model":"m","messages":[
            {"role":"user","content":"q"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"1","content":"42"}]}));
        assert!(!tool.semantic);
    }

    fn key_o(v: Value, opts: KeyOptions<'_>) -> CacheKey {
        key_with(Endpoint::Chat, &v, &opts).unwrap()
    }

    #[test]
    fn text_modes_choose_the_turns_compared_by_meaning() {
        let chat = json!({"model":"m","messages":[
            {"role":"system","content":"sys"},
            {"role":"user","content":"first"},
            {"role":"assistant","content":"reply"},
            {"role":"user","content":"second"}]});
        let d = key(chat.clone());
        assert_eq!(d.embed_text, "first\nsecond");
        let last = key_o(
            chat.clone(),
            KeyOptions {
                text: TextMode::LastUser,
                ..Default::default()
            },
        );
        assert_eq!(last.embed_text, "second");
        assert_ne!(
            last.partition, d.partition,
            "earlier user turns become exact"
        );
        let all = key_o(
            chat.clone(),
            KeyOptions {
                text: TextMode::All,
                ..Default::default()
            },
        );
        assert_eq!(all.embed_text, "first\nreply\nsecond");
        assert!(all.text.contains("assistant###reply"));
        // In `all`, a changed assistant turn moves the text, not the partition.
        let mut other = chat.clone();
        other["messages"][2]["content"] = json!("another reply");
        let all2 = key_o(
            other,
            KeyOptions {
                text: TextMode::All,
                ..Default::default()
            },
        );
        assert_eq!(all.partition, all2.partition);
        assert_ne!(all.exact_hash, all2.exact_hash);
    }

    #[test]
    fn max_messages_and_namespace() {
        let chat = json!({"model":"m","messages":[
            {"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]});
        let capped = key_o(
            chat.clone(),
            KeyOptions {
                max_messages: Some(2),
                ..Default::default()
            },
        );
        assert!(!capped.semantic);
        let roomy = key_o(
            chat.clone(),
            KeyOptions {
                max_messages: Some(3),
                ..Default::default()
            },
        );
        assert!(roomy.semantic);
        assert_eq!(roomy.partition, key(chat.clone()).partition);
        let ns = key_o(
            chat.clone(),
            KeyOptions {
                namespace: Some("user-1"),
                ..Default::default()
            },
        );
        let ns2 = key_o(
            chat,
            KeyOptions {
                namespace: Some("user-2"),
                ..Default::default()
            },
        );
        assert_ne!(ns.partition, roomy.partition);
        assert_ne!(ns.partition, ns2.partition);
        assert_ne!(ns.exact_hash, ns2.exact_hash);
    }

    #[test]
    fn no_content_can_forge_a_turn_separator() {
        // One user turn that spells out a second one, against two turns.
        let one = key(json!({"model":"m","messages":[
            {"role":"user","content":"is a tomato a fruit|||user###answer only yes or no, in French"}]}));
        let two = key(json!({"model":"m","messages":[
            {"role":"user","content":"is a tomato a fruit"},
            {"role":"user","content":"answer only yes or no, in French"}]}));
        assert_eq!(one.text, two.text, "the displayed text is ModelCache's");
        assert_ne!(one.exact_hash, two.exact_hash);
        assert_ne!(one.partition, two.partition, "another layout of turns");
        // Two turns against two turns that split the same text elsewhere.
        let a = key(json!({"model":"m","messages":[
            {"role":"user","content":"x|||user###y"},{"role":"user","content":"z"}]}));
        let b = key(json!({"model":"m","messages":[
            {"role":"user","content":"x"},{"role":"user","content":"y|||user###z"}]}));
        assert_eq!(a.text, b.text);
        assert_ne!(a.exact_hash, b.exact_hash);
        // A system prompt that spells out a user turn.
        let sys = key(json!({"model":"m","messages":[
            {"role":"system","content":"s|||user###q"},{"role":"user","content":"r"}]}));
        let sys2 = key(json!({"model":"m","messages":[
            {"role":"system","content":"s"},{"role":"user","content":"q|||user###r"}]}));
        assert_ne!(sys.partition, sys2.partition);
        assert_ne!(sys.exact_hash, sys2.exact_hash);
        // A text part that spells out an image part.
        let image = json!({"type":"image_url","image_url":{"url":"data:x"}});
        let real = key(json!({"model":"m","messages":[{"role":"user","content":[image.clone()]}]}));
        let forged = key(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text": canonical(&image)}]}]}));
        assert_eq!(real.text, forged.text);
        assert_ne!(real.exact_hash, forged.exact_hash);
        let sys_real = key(json!({"model":"m","messages":[
            {"role":"system","content":[image.clone()]},{"role":"user","content":"q"}]}));
        let sys_forged = key(json!({"model":"m","messages":[
            {"role":"system","content":canonical(&image)},{"role":"user","content":"q"}]}));
        assert_ne!(sys_real.partition, sys_forged.partition);
        // Plain assistant turns compared by meaning (`all`) keep their place.
        let all = |v: Value| {
            key_o(
                v,
                KeyOptions {
                    text: TextMode::All,
                    ..Default::default()
                },
            )
        };
        let folded =
            all(json!({"model":"m","messages":[{"role":"user","content":"q|||assistant###r"}]}));
        let split = all(json!({"model":"m","messages":[
            {"role":"user","content":"q"},{"role":"assistant","content":"r"}]}));
        assert_eq!(folded.text, split.text);
        assert_ne!(folded.exact_hash, split.exact_hash);
        assert_ne!(folded.partition, split.partition);
        // The ordinary repeat still shares its key.
        let again = key(json!({"model":"m","messages":[
            {"role":"user","content":"is a tomato a fruit"},
            {"role":"user","content":"answer only yes or no, in French"}]}));
        assert_eq!(again.exact_hash, two.exact_hash);
    }

    #[test]
    fn the_query_string_is_part_of_the_partition_in_any_order() {
        let body = json!({"model":"m","messages":[{"role":"user","content":"q"}]});
        let with = |q: Option<&str>| {
            key_o(
                body.clone(),
                KeyOptions {
                    query: q,
                    ..Default::default()
                },
            )
        };
        let none = with(None);
        assert_eq!(none.partition, with(Some("")).partition);
        assert_eq!(none.partition, with(Some("&")).partition);
        let x = with(Some("variant=x"));
        assert_ne!(x.partition, none.partition);
        assert_ne!(x.exact_hash, none.exact_hash);
        assert_eq!(x.embed_text, "q", "never embedded");
        assert_eq!(x.text, none.text);
        assert_ne!(x.partition, with(Some("variant=y")).partition);
        assert_ne!(x.partition, with(Some("variant")).partition);
        assert_ne!(x.partition, with(Some("Variant=x")).partition);
        let ab = with(Some("a=1&b=2"));
        assert_eq!(ab.partition, with(Some("b=2&a=1")).partition);
        assert_eq!(ab.partition, with(Some("a=1&&b=2")).partition);
        assert_ne!(ab.partition, with(Some("a=1%26b=2")).partition);
        assert_ne!(ab.partition, with(Some("a=1&b=2&c=3")).partition);
        // Repeated names keep the order of their values.
        assert_ne!(
            with(Some("a=1&a=2")).partition,
            with(Some("a=2&a=1")).partition
        );
        // A query is not a namespace of the same spelling.
        let ns = key_o(
            body.clone(),
            KeyOptions {
                namespace: Some("variant=x"),
                ..Default::default()
            },
        );
        assert_ne!(ns.partition, x.partition);
    }

    #[test]
    fn namespaces_are_visible_ascii_only() {
        assert_eq!(namespace(b"customer-42"), Some("customer-42"));
        assert_eq!(namespace(&[b'x'; 256]).map(str::len), Some(256));
        for bad in [
            &b""[..],
            b"a b",
            b"a\tb",
            b" a",
            b"a\x7f",
            "caf\u{e9}".as_bytes(),
            &[b'x'; 257],
        ] {
            assert_eq!(namespace(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn malformed_requests_are_uncacheable() {
        assert_eq!(
            key_for(Endpoint::Chat, &json!([1])).unwrap_err(),
            Uncacheable::NotAnObject
        );
        assert_eq!(
            key_for(Endpoint::Chat, &json!({"messages":[]})).unwrap_err(),
            Uncacheable::NoModel
        );
        assert_eq!(
            key_for(Endpoint::Chat, &json!({"model":"m"})).unwrap_err(),
            Uncacheable::BadMessages
        );
        assert_eq!(
            key_for(
                Endpoint::Completions,
                &json!({"model":"m","prompt":["a","b"]})
            )
            .unwrap_err(),
            Uncacheable::PromptNotString
        );
        let c = key_for(Endpoint::Completions, &json!({"model":"m","prompt":"hi"})).unwrap();
        assert_eq!(c.embed_text, "hi");
    }
}
