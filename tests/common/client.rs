//! The client side: one request type, [`Call`], for every call a test or a
//! bench makes (a chat request to the proxy, a plain GET, an admin call),
//! and what comes back, [`Got`].
//!
//! A call goes to the proxy of anything with [`Addrs`]: an in-process
//! gateway, a gateway process, or an address (a proxy's, an admin
//! listener's, the mock's).
//!
//! ```ignore
//! Call::ask("What is Rust?").send(&app).await;
//! Call::chat(body).key("sk-a").header("x-tenant", "b").send(&app).await;
//! Call::get("/v1/models").send(&gw).await;   // a `modelcache serve` child
//! Call::new("DELETE", &path).headers(&h).send(app.admin_addr).await;
//! ```

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use modelcache::http::body::BoxError;
use serde_json::{json, Value};

use super::Addrs;

/// A plain HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A plain HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answer, read whole.
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

/// One HTTP request, built up and then sent to an address.
#[derive(Clone, Debug)]
pub struct Call {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Call {
    /// `method path` with no headers and an empty body.
    pub fn new(method: &str, path: &str) -> Call {
        Call {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Call {
        Call::new("GET", path)
    }

    /// `POST /v1/chat/completions` with `body` as JSON.
    pub fn chat(body: Value) -> Call {
        Call::new("POST", "/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// `POST /v1/embeddings` with `body` as JSON.
    pub fn embeddings(body: &Value) -> Call {
        Call::new("POST", "/v1/embeddings")
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// `POST /v1/messages` with `body` as JSON, as Anthropic's SDKs send it
    /// (with an `anthropic-version`).
    pub fn messages(body: &Value) -> Call {
        Call::new("POST", "/v1/messages")
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(body.to_string())
    }

    /// `POST /v1/responses` with `body` as JSON.
    pub fn responses(body: &Value) -> Call {
        Call::new("POST", "/v1/responses")
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// A chat request with the one user message `q` to `gpt-test` ([`ask`]).
    pub fn ask(q: &str) -> Call {
        Call::chat(ask(q))
    }

    /// Adds a header (after those already set).
    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds headers, in order.
    pub fn headers(mut self, headers: &[(&str, &str)]) -> Call {
        for (k, v) in headers {
            self = self.header(k, v);
        }
        self
    }

    /// Adds `Authorization: Bearer key`.
    pub fn key(self, key: &str) -> Call {
        let auth = format!("Bearer {key}");
        self.header("authorization", &auth)
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Call {
        self.body = body.into();
        self
    }

    /// Sends it to `to` on a new client; panics if no answer comes.
    pub async fn send(self, to: impl Addrs) -> Got {
        self.send_on(&client(), to).await
    }

    /// Sends it to `to` on `client` (which keeps its connections).
    pub async fn send_on(self, client: &HttpClient, to: impl Addrs) -> Got {
        let what = format!("{} http://{}{}", self.method, to.proxy_addr(), self.path);
        self.try_send_on(client, to)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends it to `to` on `client`; an error if no answer comes.
    pub async fn try_send_on(self, client: &HttpClient, to: impl Addrs) -> Result<Got, BoxError> {
        let addr = to.proxy_addr();
        let mut req = Request::builder()
            .method(self.method.as_str())
            .uri(format!("http://{addr}{}", self.path));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = client.request(req.body(Full::new(self.body))?).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Got {
            status,
            headers,
            body,
        })
    }
}

/// The Python that runs the client scripts of `tests/python`:
/// `$MODELCACHE_PYTHON`, else the repository's `.venv` (`make venv`).
pub fn python() -> String {
    std::env::var("MODELCACHE_PYTHON").unwrap_or_else(|_| {
        super::repo_root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    })
}

/// A chat request body for one user message to `gpt-test`.
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

/// A key gets hits only after an upstream success (verified keys live in
/// memory): one request with a question nothing else asks proves it.
pub async fn verify_key(to: impl Addrs, headers: &[(&str, &str)]) {
    let got = Call::ask("Warm-up: prove this key upstream")
        .headers(headers)
        .send(to)
        .await;
    assert_eq!(got.status, 200, "the warm-up must succeed upstream");
}
