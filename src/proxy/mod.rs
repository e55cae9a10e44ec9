//! The data plane: everything between a client's request and its response.
//!
//! `handler` runs the phases, `upstream` talks to the provider, `tee` copies
//! answers for the cache, `sse` turns copies into storable answers, `replay`
//! serves hits, `flight` lets identical misses in flight share one upstream
//! call, and `body` holds the shared body types. Nothing here stores or looks
//! up anything itself: that is `cache`.

pub mod body;
pub mod flight;
pub mod handler;
pub mod replay;
pub mod sse;
pub mod tee;
pub mod upstream;
