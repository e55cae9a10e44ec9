//! A remote embedder: any OpenAI-compatible `POST /v1/embeddings` endpoint
//! (ModelCache's "LLM embedding layer"), for teams without a local model.
//!
//! Owns the HTTP call, its timeout, and turning the answer into unit
//! vectors in input order. It runs on an embedding worker thread with a
//! small runtime of its own. It must never block a request longer than its
//! timeout: an error or a timeout fails the batch, and the lookups in it are
//! forwarded as misses.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use serde_json::{json, Value};

use super::{EmbedError, Embedder};

use crate::{config::RemoteSettings, http::upstream::Connector};

/// Embeds through an OpenAI-compatible endpoint.
pub struct OpenAiEmbedder {
    rt: tokio::runtime::Runtime,
    client: Client<Connector, Full<Bytes>>,
    uri: Uri,
    model: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    dims: usize,
}

impl OpenAiEmbedder {
    /// Connects (lazily) and learns the vector size, by asking the endpoint
    /// once when `dimensions` is not set.
    pub fn connect(s: &RemoteSettings) -> Result<OpenAiEmbedder, EmbedError> {
        let load = |e: String| EmbedError::Load(format!("{}: {e}", s.url));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| load(e.to_string()))?;
        let client = crate::http::upstream::https_client(s.timeout).map_err(load)?;
        let authorization = match &s.api_key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose()))
                    .map_err(|_| load("the API key is not a valid header value".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let uri: Uri = s.url.as_str().parse().map_err(|e| load(format!("{e}")))?;
        let mut e = OpenAiEmbedder {
            rt,
            client,
            uri,
            model: s.model.clone(),
            authorization,
            timeout: s.timeout,
            dims: s.dimensions.unwrap_or(0),
        };
        if e.dims == 0 {
            let probe = e
                .call(&["dimension probe".to_string()])
                .map_err(|err| load(format!("asking the vector size: {err}")))?;
            e.dims = probe.first().map_or(0, Vec::len);
            if e.dims == 0 {
                return Err(load("the endpoint returned an empty vector".into()));
            }
        }
        Ok(e)
    }

    fn call(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let fail = |e: String| EmbedError::Model(format!("remote embedding: {e}"));
        let body = json!({"model": self.model, "input": texts}).to_string();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = &self.authorization {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let client = self.client.clone();
        let answer = self.rt.block_on(async move {
            tokio::time::timeout(self.timeout, async move {
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>((status, bytes))
            })
            .await
        });
        let (status, bytes) = match answer {
            Err(_) => return Err(fail(format!("no answer within {:?}", self.timeout))),
            Ok(Err(e)) => return Err(fail(e)),
            Ok(Ok(x)) => x,
        };
        if !status.is_success() {
            let snippet: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(fail(format!("HTTP {status}: {snippet}")));
        }
        parse(&bytes, texts.len(), self.dims).map_err(fail)
    }
}

/// The vectors of an embeddings answer, in input order, scaled to unit
/// length; `dims` 0 accepts any size (once, at start).
fn parse(bytes: &[u8], n: usize, dims: usize) -> Result<Vec<Vec<f32>>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let data = v["data"]
        .as_array()
        .ok_or_else(|| "no data array in the answer".to_string())?;
    if data.len() != n {
        return Err(format!("{} vectors for {n} inputs", data.len()));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    for (pos, item) in data.iter().enumerate() {
        let i = item["index"].as_u64().map_or(pos, |i| i as usize);
        let raw = item["embedding"].as_array().ok_or_else(|| {
            "an item has no embedding array (base64 is not supported)".to_string()
        })?;
        let mut vec: Vec<f32> = raw
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| "an embedding holds a non-number".to_string())?;
        if dims != 0 && vec.len() != dims {
            return Err(format!(
                "a vector of {} dimensions, expected {dims}",
                vec.len()
            ));
        }
        let norm = vec.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err("a zero or non-finite vector".into());
        }
        vec.iter_mut().for_each(|x| *x /= norm);
        let slot = out
            .get_mut(i)
            .ok_or_else(|| format!("index {i} out of range"))?;
        *slot = Some(vec);
    }
    out.into_iter()
        .map(|v| v.ok_or_else(|| "an input got no vector".to_string()))
        .collect()
}

impl Embedder for OpenAiEmbedder {
    fn dims(&self) -> usize {
        self.dims
    }

    fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.call(texts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_reordered_by_index_and_normalised() {
        let body = br#"{"object":"list","data":[
            {"object":"embedding","index":1,"embedding":[0.0,2.0]},
            {"object":"embedding","index":0,"embedding":[3.0,4.0]}],"model":"m"}"#;
        let v = parse(body, 2, 2).unwrap();
        assert_eq!(v[0], vec![0.6, 0.8]);
        assert_eq!(v[1], vec![0.0, 1.0]);
        assert!(parse(body, 3, 2)
            .unwrap_err()
            .contains("2 vectors for 3 inputs"));
        assert!(parse(body, 2, 3).unwrap_err().contains("expected 3"));
        assert!(parse(b"{}", 1, 0).is_err());
        assert!(parse(br#"{"data":[{"index":0,"embedding":[0,0]}]}"#, 1, 0).is_err());
    }
}
