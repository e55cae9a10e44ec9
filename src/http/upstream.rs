//! The upstream client: pooled, HTTP/1.1 and HTTP/2, TLS by rustls (ring).
//!
//! Owns building the upstream request (origin + unchanged path and query,
//! hop-by-hop headers dropped) and the connect and header timeouts. It must
//! never alter the body or the end-to-end headers.

use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use super::body::ProxyBody;
use super::error::GatewayError;
use crate::config::UpstreamSettings;

/// The upstream connector: HTTPS (or plain HTTP) over TCP.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled client for one upstream origin, with its tenant's auth and
/// extra headers.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, ProxyBody>,
    base: String,
    header_timeout: Duration,
    idle_timeout: Duration,
    extra: Vec<(HeaderName, HeaderValue)>,
    /// `auth = "replace"`: the caller's credentials never go upstream ...
    replace: bool,
    /// ... and this header carries the tenant's key instead, if it has one.
    auth: Option<(HeaderName, HeaderValue)>,
}

fn secret_header(value: String) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| "the upstream key is not a valid header value".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

/// Whether a request belongs to Anthropic's API: `/v1/messages` (and the
/// paths under it), or any request that names an `anthropic-version`, as
/// Anthropic's SDKs always do.
pub fn is_anthropic(path: &str, headers: &HeaderMap) -> bool {
    path == "/v1/messages"
        || path.starts_with("/v1/messages/")
        || headers.contains_key("anthropic-version")
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including any named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        h.remove(n);
    }
}

/// A pooled HTTP/1.1 and HTTP/2 client, TLS by rustls (ring) with the
/// webpki roots, plain HTTP allowed, for bodies of type `B`.
pub fn https_client<B>(connect_timeout: Duration) -> Result<Client<Connector, B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| e.to_string())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(tls))
}

impl Upstream {
    /// A client for `s.url`, the OpenAI family: a replaced key goes as
    /// `Authorization: Bearer`.
    pub fn new(s: &UpstreamSettings) -> Result<Upstream, String> {
        let auth = match &s.api_key {
            Some(k) => Some((
                header::AUTHORIZATION,
                secret_header(format!("Bearer {}", k.expose()))?,
            )),
            None => None,
        };
        Upstream::build(s, &s.url, s.api_key.is_some(), auth)
    }

    /// A client for `s.anthropic_url`, the Anthropic family: a replaced key
    /// goes as `x-api-key`. A tenant that replaces keys but names no
    /// Anthropic key sends none there (the caller's never leaves).
    pub fn anthropic(s: &UpstreamSettings) -> Result<Upstream, String> {
        let auth = match &s.anthropic_api_key {
            Some(k) => Some((
                HeaderName::from_static("x-api-key"),
                secret_header(k.expose().to_string())?,
            )),
            None => None,
        };
        let replace = s.api_key.is_some() || s.anthropic_api_key.is_some();
        Upstream::build(s, &s.anthropic_url, replace, auth)
    }

    fn build(
        s: &UpstreamSettings,
        base: &url::Url,
        replace: bool,
        auth: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Upstream, String> {
        Ok(Upstream {
            client: https_client(s.connect_timeout)?,
            base: base.as_str().trim_end_matches('/').to_string(),
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
            extra: s.headers.clone(),
            replace,
            auth,
        })
    }

    /// Longest silence allowed between two chunks of an answer.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Sends `parts` with `body` upstream and waits for the response headers.
    pub async fn send(
        &self,
        parts: &http::request::Parts,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, GatewayError> {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: Uri = format!("{}{}", self.base, pq)
            .parse()
            .map_err(|e: http::uri::InvalidUri| GatewayError::BadTarget(e.to_string()))?;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        // NOTE: the client sets Host from the upstream URI.
        headers.remove(header::HOST);
        // The gateway's own request headers stop here.
        let ours: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("x-modelcache-"))
            .cloned()
            .collect();
        for n in ours {
            headers.remove(n);
        }
        for (n, v) in &self.extra {
            headers.insert(n.clone(), v.clone());
        }
        if self.replace {
            // Virtual keys: the caller's gateway key never leaves the gateway,
            // and no extra header can replace the tenant's key.
            for n in ["authorization", "api-key", "x-api-key"] {
                headers.remove(n);
            }
            if let Some((n, v)) = &self.auth {
                headers.insert(n.clone(), v.clone());
            }
        }
        *req.headers_mut() = headers;
        match tokio::time::timeout(self.header_timeout, self.client.request(req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout(self.header_timeout)),
            Ok(Err(e)) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                Err(GatewayError::UpstreamUnreachable(msg))
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}
