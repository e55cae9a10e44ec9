//! Errors the gateway itself answers with, in OpenAI's error shape.
//!
//! Owns the mapping from a failure to an HTTP status, an OpenAI error `type`
//! and a low-cardinality `kind()` for metrics. This is the only place that
//! builds an error response. It must never be used for upstream errors: those
//! are passed through untouched.

use bytes::Bytes;
use http::{header, Response, StatusCode};

use super::body::{full, ProxyBody};

/// A failure of the gateway's own making.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The upstream could not be reached (DNS, connect, TLS, reset).
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The upstream's body failed before the response head went to the client
    /// (broken framing, a reset right after the head).
    #[error("the upstream's answer broke off before it could be relayed: {0}")]
    UpstreamBody(String),
    /// The upstream's answer could not be merged with cached parts (an
    /// embeddings batch answered with the wrong number of vectors).
    #[error("the upstream's answer to the uncached part of the request could not be used: {0}")]
    UpstreamShape(String),
    /// The upstream took too long to send headers.
    #[error("upstream timed out after {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// The request could not be read from the client.
    #[error("could not read the request body: {0}")]
    BadRequestBody(String),
    /// The client stopped sending its request body part way.
    #[error("the request body stalled for longer than {0:?}")]
    RequestTimeout(std::time::Duration),
    /// The request URI could not be mapped onto the upstream.
    #[error("bad request target: {0}")]
    BadTarget(String),
    /// A response id this gateway minted for a cached answer and no longer
    /// holds (a restart, another replica, or a day unused).
    #[error("response {0} was served from the modelcache gateway's cache and is no longer held here (the gateway restarted, another replica served it, or it went unused for a day); send the conversation as input instead of previous_response_id")]
    NotHeld(String),
    /// The caller matches no tenant and `auth.unknown_keys = "reject"`.
    #[error("this API key is not known to the gateway (modelcache): ask its operator for a key")]
    UnknownKey,
}

impl GatewayError {
    /// HTTP status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::UpstreamUnreachable(_)
            | GatewayError::UpstreamBody(_)
            | GatewayError::UpstreamShape(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BadRequestBody(_) | GatewayError::BadTarget(_) => StatusCode::BAD_REQUEST,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UnknownKey => StatusCode::UNAUTHORIZED,
            GatewayError::NotHeld(_) => StatusCode::NOT_FOUND,
        }
    }

    /// OpenAI error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::UpstreamUnreachable(_)
            | GatewayError::UpstreamBody(_)
            | GatewayError::UpstreamShape(_)
            | GatewayError::UpstreamTimeout(_) => "api_error",
            GatewayError::BadRequestBody(_)
            | GatewayError::RequestTimeout(_)
            | GatewayError::BadTarget(_)
            | GatewayError::NotHeld(_)
            | GatewayError::UnknownKey => "invalid_request_error",
        }
    }

    /// Short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::UpstreamUnreachable(_) => "upstream_unreachable",
            GatewayError::UpstreamBody(_) => "upstream_body",
            GatewayError::UpstreamShape(_) => "upstream_shape",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::BadRequestBody(_) => "bad_request_body",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::BadTarget(_) => "bad_target",
            GatewayError::UnknownKey => "unknown_key",
            GatewayError::NotHeld(_) => "response_not_held",
        }
    }

    /// The response in the shape of the API called: Anthropic's
    /// (`{"type":"error","error":{"type","message"}}`) or OpenAI's.
    pub fn to_response_as(&self, anthropic: bool) -> Response<ProxyBody> {
        if !anthropic {
            return self.to_response();
        }
        let kind = match self {
            GatewayError::UnknownKey => "authentication_error",
            GatewayError::BadRequestBody(_)
            | GatewayError::RequestTimeout(_)
            | GatewayError::BadTarget(_) => "invalid_request_error",
            GatewayError::NotHeld(_) => "not_found_error",
            GatewayError::UpstreamTimeout(_) => "timeout_error",
            _ => "api_error",
        };
        self.respond(serde_json::json!({
            "type": "error",
            "error": {"type": kind, "message": self.to_string()},
        }))
    }

    /// `body` as this error's JSON response.
    fn respond(&self, body: serde_json::Value) -> Response<ProxyBody> {
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert("x-modelcache", header::HeaderValue::from_static("error"));
        resp
    }

    /// The response: `{"error":{"message","type","param","code"}}`.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": null,
                "code": match self {
                    // NOTE: the code OpenAI uses, so that SDKs raise AuthenticationError.
                    GatewayError::UnknownKey => "invalid_api_key".to_string(),
                    _ => format!("modelcache_{}", self.kind()),
                },
            }
        });
        self.respond(body)
    }
}
