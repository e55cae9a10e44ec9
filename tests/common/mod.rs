//! Test harness: a hyper mock upstream that counts calls and records what it
//! received, a gateway started in-process on 127.0.0.1:0, and a small client.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Child,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use modelcache::{
    app::{self, AppOptions, RunningApp},
    config::{self, Overrides, Settings},
    embed::{Embedder, EmbedderFactory, HashEmbedder},
    http::body::{BoxError, ProxyBody},
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// A request as the mock upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the mock answers.
pub enum Reply {
    /// Status, headers, body in one piece.
    Full(u16, Vec<(&'static str, String)>, Bytes),
    /// Status 200, SSE, body in chunks with a pause between them.
    Chunks(Vec<(&'static str, String)>, Vec<Bytes>, Duration),
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
}

pub type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

pub struct Mock {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request seen")
    }
}

fn boxed_full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

async fn render(reply: Reply) -> Response<ProxyBody> {
    let mut reply = reply;
    while let Reply::Delay(d, inner) = reply {
        tokio::time::sleep(d).await;
        reply = *inner;
    }
    match reply {
        Reply::Full(status, headers, body) => {
            let mut r = Response::new(boxed_full(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().append(k, v.parse().unwrap());
            }
            r
        }
        Reply::Chunks(headers, chunks, pause) => {
            let s = stream::unfold(
                (chunks.into_iter(), pause, true),
                |(mut it, pause, first)| async move {
                    let next = it.next()?;
                    if !first {
                        tokio::time::sleep(pause).await;
                    }
                    Some((Ok::<_, BoxError>(Frame::data(next)), (it, pause, false)))
                },
            );
            let mut r = Response::new(StreamBody::new(s).boxed_unsync());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            for (k, v) in headers {
                r.headers_mut().append(k, v.parse().unwrap());
            }
            r
        }
        Reply::Delay(..) => unreachable!(),
    }
}

/// Starts a mock upstream with `handler`.
pub async fn mock(handler: Handler) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (calls.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (c, s, h) = (c.clone(), s.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (c, s, h) = (c.clone(), s.clone(), h.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            method: parts.method.to_string(),
                            path_and_query: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: parts.headers,
                            body,
                        };
                        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                        s.lock().unwrap().push(seen.clone());
                        Ok::<_, Infallible>(render(h(&seen, n)).await)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Mock { addr, calls, seen }
}

/// The last user message of a chat request (or the prompt).
pub fn question(seen: &Seen) -> String {
    let v: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        return p.to_string();
    }
    v.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string()
}

pub fn chat_json(content: &str, finish: &str) -> Value {
    json!({
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000, "model": "gpt-test",
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                     "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
}

pub fn sse_chunks(content: &str, finish: &str, include_usage: bool) -> Vec<Bytes> {
    let head = |delta: Value, fr: Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-upstream","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test",
                   "system_fingerprint":"fp_test",
                   "choices":[{"index":0,"delta":delta,"logprobs":null,"finish_reason":fr}]})
        ))
    };
    let mut out = vec![head(json!({"role":"assistant","content":""}), Value::Null)];
    for w in content.split_inclusive(' ') {
        out.push(head(json!({"content": w}), Value::Null));
    }
    out.push(head(json!({}), json!(finish)));
    if include_usage {
        out.push(Bytes::from(format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-upstream","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test",
                   "choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}})
        )));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The answer the default mock gives to the `n`th call for `q`.
pub fn answer_for(q: &str, n: usize) -> String {
    format!("Answer #{n} to: {q}")
}

/// A mock that answers chat requests (JSON or SSE, as asked) with
/// `answer_for(question, call number)`, and anything else with `{"ok":true}`.
pub fn llm() -> Handler {
    llm_tagged("")
}

/// Like [`llm`], with `tag` in front of every answer, so that answers from
/// two upstreams can be told apart.
pub fn llm_tagged(tag: &'static str) -> Handler {
    Arc::new(move |seen: &Seen, n: usize| {
        let v: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        if !seen.path_and_query.starts_with("/v1/chat/completions")
            && !seen.path_and_query.starts_with("/v1/completions")
        {
            return Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from("{\"ok\":true}"),
            );
        }
        let content = format!("{tag}{}", answer_for(&question(seen), n));
        if seen.path_and_query.starts_with("/v1/completions") {
            let body = json!({"id":"cmpl-up","object":"text_completion","created":1,"model":"gpt-test",
                "choices":[{"text": content, "index": 0, "logprobs": null, "finish_reason": "stop"}]});
            return Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from(body.to_string()),
            );
        }
        if v["stream"] == json!(true) {
            let usage = v["stream_options"]["include_usage"] == json!(true);
            Reply::Chunks(
                vec![],
                sse_chunks(&content, "stop", usage),
                Duration::from_millis(1),
            )
        } else {
            Reply::Full(
                200,
                vec![("content-type", "application/json".into())],
                Bytes::from(chat_json(&content, "stop").to_string()),
            )
        }
    })
}

/// A mock that streams `answer_for(question, n)` as SSE with `pause` between chunks.
pub fn slow_stream(pause: Duration) -> Handler {
    Arc::new(move |seen: &Seen, n: usize| {
        Reply::Chunks(
            vec![],
            sse_chunks(&answer_for(&question(seen), n), "stop", false),
            pause,
        )
    })
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Settings from a config file's text (written into `dir`), with `env` as
/// the environment, on ephemeral ports, with data under `dir/data`.
pub fn settings_from(text: &str, dir: &Path, env: &[(&str, &str)]) -> Settings {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let mut s = config::load(
        Some(&path),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        &Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: None,
            data_dir: Some(dir.join("data").display().to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("config: {e}"));
    let root = repo_root();
    s.embedding.model_dir = root.join("models/all-minilm-l6-v2-int8");
    s.embedding.onnxruntime = root.join("models/onnxruntime/libonnxruntime.so");
    s.server.drain_timeout = Duration::from_secs(5);
    with_admin_token(&mut s);
    s
}

/// A chat request with `Authorization: Bearer key`.
pub async fn chat_k(addr: SocketAddr, body: Value, key: &str) -> Got {
    let auth = format!("Bearer {key}");
    chat_h(addr, body, &[("authorization", auth.as_str())]).await
}

/// Settings for a test gateway on ephemeral ports, with the test admin token.
pub fn settings(upstream: &str, data_dir: &Path) -> Settings {
    let mut s = config::load(
        None,
        Vec::new(),
        &Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(upstream.into()),
            data_dir: Some(data_dir.display().to_string()),
        },
    )
    .unwrap();
    let root = repo_root();
    s.embedding.model_dir = root.join("models/all-minilm-l6-v2-int8");
    s.embedding.onnxruntime = root.join("models/onnxruntime/libonnxruntime.so");
    s.server.drain_timeout = Duration::from_secs(5);
    with_admin_token(&mut s);
    s
}

/// Changes the cache policy of every tenant (and the `[cache]` default).
pub fn policy(s: &mut Settings, f: impl Fn(&mut modelcache::config::Policy)) {
    f(&mut s.cache.policy);
    for t in &mut s.tenants {
        f(&mut t.policy);
    }
}

/// Changes the upstream settings of every tenant (and `[upstream]`).
pub fn upstreams(s: &mut Settings, f: impl Fn(&mut modelcache::config::UpstreamSettings)) {
    f(&mut s.upstream);
    for t in &mut s.tenants {
        f(&mut t.upstream);
    }
}

/// A key gets hits only after an upstream success (verified keys live in
/// memory): one request with a question nothing else asks proves it.
pub async fn verify_key(addr: SocketAddr, headers: &[(&str, &str)]) {
    let got = chat_h(addr, ask("Warm-up: prove this key upstream"), headers).await;
    assert_eq!(got.status, 200, "the warm-up must succeed upstream");
}

pub fn hash_embedder() -> EmbedderFactory {
    Arc::new(|| Ok(Box::new(HashEmbedder::new(1024)) as Box<dyn Embedder>))
}

/// Starts a gateway with the hashing embedder (logic tests).
pub async fn gateway(s: Settings) -> RunningApp {
    gateway_with(
        s,
        AppOptions {
            embedder: Some(hash_embedder()),
            store: None,
        },
    )
    .await
}

/// The usual setup: the `llm()` mock, a fresh data folder, a gateway with
/// the hashing embedder. Keep the folder alive as long as the gateway.
pub async fn start() -> (Mock, tempfile::TempDir, RunningApp) {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = gateway(settings(&up.url(), dir.path())).await;
    (up, dir, app)
}

/// Starts a gateway with the real model.
pub async fn real_gateway(s: Settings) -> RunningApp {
    gateway_with(s, AppOptions::default()).await
}

pub async fn gateway_with(s: Settings, opts: AppOptions) -> RunningApp {
    let app = app::start(s, opts).await.unwrap();
    app.wait_ready(Duration::from_secs(60)).await.unwrap();
    app
}

/// Starts a gateway with the hashing embedder on `store` (a store test double).
pub async fn gateway_on(s: Settings, store: Arc<dyn modelcache::store::Store>) -> RunningApp {
    gateway_with(
        s,
        AppOptions {
            embedder: Some(hash_embedder()),
            store: Some(store),
        },
    )
    .await
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    pub fn cache(&self) -> String {
        self.header("x-modelcache")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

pub async fn chat(addr: SocketAddr, body: Value) -> Got {
    chat_h(addr, body, &[]).await
}

pub async fn chat_h(addr: SocketAddr, body: Value, headers: &[(&str, &str)]) -> Got {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(addr, "POST", "/v1/chat/completions", &h, body.to_string()).await
}

pub fn ask(q: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": q}]})
}

/// The content of a JSON or SSE chat answer.
pub fn content_of(got: &Got) -> String {
    if got.header("content-type").starts_with("text/event-stream") {
        let v = modelcache::proxy::sse::assemble(modelcache::keying::Endpoint::Chat, &got.text())
            .unwrap_or_else(|e| panic!("bad stream ({e}): {}", got.text()));
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    } else {
        got.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Waits until the write-back queue has stored everything queued so far.
pub async fn settle(app: &RunningApp) {
    // The client may see the last byte just before the tee sees the end.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if let Some(c) = app.cache() {
        c.flush(Duration::from_secs(10)).await;
    }
}

pub async fn metrics(app: &RunningApp) -> String {
    send(app.admin_addr, "GET", "/metrics", &[], Bytes::new())
        .await
        .text()
}

/// Sum of a metric's samples whose line contains every `parts`.
pub fn metric_sum(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The addresses a `modelcache serve` child prints on stdout (proxy, admin),
/// once its admin listener says ready.
pub async fn listening(child: &mut std::process::Child) -> (SocketAddr, SocketAddr) {
    use std::io::{BufRead, BufReader};
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let mut addr = |prefix: &str| -> SocketAddr {
        let line = lines.next().unwrap().unwrap();
        let rest = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected line {line}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let proxy = addr("modelcache: proxy listening on http://");
    let admin = addr("modelcache: admin listening on http://");
    for _ in 0..600 {
        if send(admin, "GET", "/readyz", &[], Bytes::new())
            .await
            .status
            == 200
        {
            return (proxy, admin);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway was not ready within 60 s");
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_modelcache")
}

/// A `modelcache serve` child process.
pub struct Running {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Running {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    pub async fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "exit status {status}");
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// The command `modelcache serve --config config` on ephemeral ports with
/// data under `dir/data`, its stdout piped (for [`listening`]) and its logs
/// in `dir/log`, at `RUST_LOG=debug`; the caller may add to it.
pub fn serve_command(config: &Path, dir: &Path, env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin());
    cmd.current_dir(repo_root())
        .args(["serve", "--config"])
        .arg(config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("log")).unwrap());
    cmd
}

/// Spawns `cmd` (from [`serve_command`] with `dir`) and waits until it is ready.
pub async fn spawn_served(mut cmd: std::process::Command, dir: &Path) -> Running {
    let mut child = cmd.spawn().unwrap();
    let (proxy, admin) = listening(&mut child).await;
    Running {
        child,
        proxy,
        admin,
        log: dir.join("log"),
    }
}

/// Starts `modelcache serve --config config` with debug logs into `dir/log`.
pub async fn serve(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Running {
    spawn_served(serve_command(config, dir, env), dir).await
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Fails if any file below `dir` contains `needle`.
pub fn assert_no_file_contains(dir: &Path, needle: &str) {
    let files = files_under(dir);
    assert!(!files.is_empty(), "nothing under {}", dir.display());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} contains a secret",
            f.display()
        );
    }
}

/// Runs `modelcache check-config --config path` with extra environment.
pub fn check_config(path: &Path, env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_modelcache"))
        .args(["check-config", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// A store over the in-memory one whose writes can be held at a gate (to
/// fill the write-back queue) or made to fail (a broken disk).
#[derive(Default)]
pub struct FaultyStore {
    inner: modelcache::store::memory::MemoryStore,
    held: Mutex<bool>,
    cv: std::sync::Condvar,
    fail: std::sync::atomic::AtomicBool,
    /// The size of every batch of hits the gateway wrote.
    pub hit_batches: Mutex<Vec<usize>>,
    /// Refuses (as a store that is up but cannot hold the data) any batch
    /// with an entry whose text contains "POISON".
    pub reject_poison: std::sync::atomic::AtomicBool,
}

type StoreResult<T> = Result<T, modelcache::store::StoreError>;

impl FaultyStore {
    /// A store whose inserts wait until [`FaultyStore::release`].
    pub fn held() -> FaultyStore {
        let s = FaultyStore::default();
        *s.held.lock().unwrap() = true;
        s
    }

    /// Lets held inserts through.
    pub fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.cv.notify_all();
    }

    /// Makes every write fail (or succeed again).
    pub fn fail_writes(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    fn write(&self) -> StoreResult<()> {
        let mut g = self.held.lock().unwrap();
        while *g {
            g = self.cv.wait(g).unwrap();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(modelcache::store::StoreError::Io(std::io::Error::other(
                "disk I/O error (test)",
            )));
        }
        Ok(())
    }
}

impl modelcache::store::Store for FaultyStore {
    fn record_verified_key(&self, t: &str, k: &[u8; 32], at: i64) -> StoreResult<()> {
        self.write()?;
        self.inner.record_verified_key(t, k, at)
    }
    fn verified_key(&self, t: &str, k: &[u8; 32]) -> StoreResult<Option<i64>> {
        self.inner.verified_key(t, k)
    }
    fn revoke_verified_key(&self, t: &str, k: &[u8; 32]) -> StoreResult<()> {
        self.write()?;
        self.inner.revoke_verified_key(t, k)
    }
    fn insert_batch(&self, e: &[modelcache::store::NewEntry]) -> StoreResult<Vec<i64>> {
        self.write()?;
        if self.reject_poison.load(Ordering::SeqCst) && e.iter().any(|e| e.text.contains("POISON"))
        {
            return Err(modelcache::store::StoreError::Rejected(
                "value out of range (test)".into(),
            ));
        }
        self.inner.insert_batch(e)
    }
    fn get(&self, id: i64) -> StoreResult<Option<modelcache::store::Entry>> {
        self.inner.get(id)
    }
    fn get_exact(&self, t: &str, h: &str) -> StoreResult<Option<modelcache::store::Entry>> {
        self.inner.get_exact(t, h)
    }
    fn record_hits(&self, h: &[modelcache::store::HitRecord]) -> StoreResult<()> {
        self.write()?;
        self.hit_batches.lock().unwrap().push(h.len());
        self.inner.record_hits(h)
    }
    fn index_rows(&self, t: &str) -> StoreResult<Vec<(u64, u64)>> {
        self.inner.index_rows(t)
    }
    fn embedding(&self, id: i64) -> StoreResult<Option<Vec<f32>>> {
        self.inner.embedding(id)
    }
    fn store_id(&self) -> StoreResult<String> {
        self.inner.store_id()
    }
    fn sweep(
        &self,
        now: i64,
        limits: &modelcache::store::Limits,
    ) -> StoreResult<Vec<modelcache::store::Removed>> {
        self.inner.sweep(now, limits)
    }
    fn delete(&self, t: &str, ids: &[i64]) -> StoreResult<Vec<modelcache::store::Removed>> {
        self.write()?;
        self.inner.delete(t, ids)
    }
    fn truncate(
        &self,
        t: &str,
        model: Option<&str>,
    ) -> StoreResult<Vec<modelcache::store::Removed>> {
        self.write()?;
        self.inner.truncate(t, model)
    }
    fn list(&self, q: &modelcache::store::ListQuery) -> StoreResult<Vec<modelcache::store::Entry>> {
        self.inner.list(q)
    }
    fn hit_log(
        &self,
        t: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<modelcache::store::HitLogRow>> {
        self.inner.hit_log(t, limit)
    }
    fn hit_by_request(&self, r: &str) -> StoreResult<Option<modelcache::store::HitLogRow>> {
        self.inner.hit_by_request(r)
    }
    fn add_negative(&self, n: &modelcache::store::Negative) -> StoreResult<()> {
        self.write()?;
        self.inner.add_negative(n)
    }
    fn negatives(&self) -> StoreResult<Vec<modelcache::store::Negative>> {
        self.inner.negatives()
    }
    fn register_model(&self, t: &str, m: &str, now: i64) -> StoreResult<bool> {
        self.write()?;
        self.inner.register_model(t, m, now)
    }
    fn stats(&self) -> StoreResult<Vec<modelcache::store::TenantStats>> {
        self.inner.stats()
    }
    fn counts(&self) -> StoreResult<Vec<(String, u64)>> {
        self.inner.counts()
    }
}

/// The admin token of test gateways.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Gives `s` the test admin token.
pub fn with_admin_token(s: &mut Settings) {
    s.admin.token = Some(modelcache::config::Secret::new(ADMIN_TOKEN));
}

/// A call to the admin listener with the test admin token.
pub async fn admin(app: &RunningApp, method: &str, path: &str, body: Value) -> Got {
    admin_at(app.admin_addr, method, path, body).await
}

/// [`admin`] on the admin listener at `addr` (a gateway process).
pub async fn admin_at(addr: SocketAddr, method: &str, path: &str, body: Value) -> Got {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    send(
        addr,
        method,
        path,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// `POST /modelcache` with a plain JSON body and `headers`.
pub async fn modelcache_call(app: &RunningApp, body: Value, headers: &[(&str, &str)]) -> Got {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(app.admin_addr, "POST", "/modelcache", &h, body.to_string()).await
}

/// `POST /admin/lookup` for one user message to `gpt-test`: the dry run's JSON.
pub async fn dry_run(app: &RunningApp, q: &str) -> Value {
    dry_run_at(app.admin_addr, q).await
}

/// [`dry_run`] on the admin listener at `addr` (a gateway process).
pub async fn dry_run_at(addr: SocketAddr, q: &str) -> Value {
    admin_at(
        addr,
        "POST",
        "/admin/lookup",
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": q}]}),
    )
    .await
    .json()
}
