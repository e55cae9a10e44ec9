//! The primitives of answers on the wire, shared by every API's reader and
//! replayer: undoing `Content-Encoding`, splitting a Server-Sent Events body
//! into its events, cutting text into stream-sized pieces, and the reasons
//! an answer is not cached. A leaf: it imports nothing else of the proxy.

use std::io::Read;

/// Why an upstream answer is not cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// `Content-Encoding` we cannot decode.
    #[error("unsupported content-encoding {0}")]
    Encoding(String),
    /// The body did not decompress.
    #[error("body does not decode")]
    Corrupt,
    /// Not JSON, or not the expected shape.
    #[error("not a complete answer: {0}")]
    Shape(&'static str),
    /// The stream carried an error event.
    #[error("the stream carried an error")]
    ErrorEvent,
    /// The stream ended before its last event.
    #[error("the stream ended before its last event ([DONE], message_stop or response.completed)")]
    NoDone,
    /// A `finish_reason` the policy does not cache.
    #[error("finish_reason {0} is not cacheable")]
    FinishReason(String),
}

/// Undoes `Content-Encoding`.
pub fn decode(encoding: Option<&str>, body: &[u8], cap: usize) -> Result<Vec<u8>, Reject> {
    let enc = encoding.unwrap_or("identity").trim().to_ascii_lowercase();
    let mut out = Vec::new();
    let res = match enc.as_str() {
        "" | "identity" => return Ok(body.to_vec()),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(cap as u64 + 1)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(body)
            .take(cap as u64 + 1)
            .read_to_end(&mut out),
        other => return Err(Reject::Encoding(other.to_string())),
    };
    match res {
        Ok(_) if out.len() <= cap => Ok(out),
        _ => Err(Reject::Corrupt),
    }
}

/// One Server-Sent Event: its type (the `event:` field) and its data, each
/// if present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field.
    pub kind: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: Option<String>,
}

impl Event {
    /// Whether the upstream flagged this event as an error (`event: error`).
    pub fn is_error(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("error"))
    }
}

/// The events of an SSE body, in order: every block with a `data:` or an
/// `event:` line.
pub fn events(body: &str) -> Vec<Event> {
    let mut out = Vec::new();
    let mut cur = Event::default();
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if cur.kind.is_some() || cur.data.is_some() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut cur.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => cur.data = Some(rest.to_string()),
            }
        } else if let Some(rest) = line.strip_prefix("event:") {
            cur.kind = Some(rest.strip_prefix(' ').unwrap_or(rest).to_string());
        }
    }
    if cur.kind.is_some() || cur.data.is_some() {
        out.push(cur);
    }
    out
}

/// The `data` payloads of an SSE body, in order.
pub fn data_events(body: &str) -> Vec<String> {
    events(body).into_iter().filter_map(|e| e.data).collect()
}

/// Splits text into stream-sized pieces at whitespace, about `size` bytes each.
pub fn pieces(text: &str, size: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        cur.push(ch);
        if cur.len() >= size && ch.is_whitespace() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
