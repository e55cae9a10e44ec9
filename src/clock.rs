//! Time and fresh ids: a leaf anyone may import.
//!
//! Owns the gateway's one reading of the wall clock (Unix milliseconds and
//! seconds) and the random ids it hands out: a served hit's request id and a
//! replayed completion's id. It must never import another module of the
//! crate beyond `keying`'s endpoint names.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

use crate::keying::Endpoint;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh id for a served hit, sent as `x-modelcache-request-id` and kept in
/// the hit log, so that feedback can name the hit.
pub fn new_request_id() -> String {
    format!("mc-{:016x}", rand::rng().random::<u64>())
}

/// A fresh completion id in OpenAI's style.
pub fn completion_id(endpoint: Endpoint) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..29)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    match endpoint {
        Endpoint::Chat => format!("chatcmpl-mc{tail}"),
        // NOTE: an embeddings answer carries no id; the tail names nothing.
        Endpoint::Completions | Endpoint::Embeddings => format!("cmpl-mc{tail}"),
        Endpoint::Messages => format!("msg_mc{tail}"),
        Endpoint::Responses => format!("resp_mc{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_shapes_and_differ() {
        let a = completion_id(Endpoint::Chat);
        assert!(a.starts_with("chatcmpl-mc") && a.len() == 40, "{a}");
        assert!(completion_id(Endpoint::Completions).starts_with("cmpl-mc"));
        assert_ne!(new_request_id(), new_request_id());
        assert!(now_ms() / 1000 >= now_secs() as i64 - 1);
    }
}
