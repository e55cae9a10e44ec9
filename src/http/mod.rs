//! HTTP parts shared by the proxy, the admin listener and the remote
//! embedder: a leaf anyone may import.
//!
//! `body` holds the body types and their wrappers (bounded, timed, teed
//! elsewhere); `upstream` is an HTTPS client to one provider, with its
//! timeouts and retries. Nothing here knows about caching.

pub mod body;
pub mod error;
pub mod upstream;
