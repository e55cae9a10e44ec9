//! The data plane: everything between a client's request and its response.
//!
//! `handler` runs the phases, `tee` copies answers for the cache, `sse` turns
//! copies into storable answers, `replay` serves hits, and `flight` lets
//! identical misses in flight share one upstream call; `embeddings` reads and
//! writes the vectors of a batch served partly from the cache, and `anthropic`
//! reads and replays Anthropic's Messages stream, `responses` OpenAI's
//! Responses lifecycle and the ids the gateway mints for it. The provider's client
//! and the body types are `http`'s. Nothing here stores or looks up anything
//! itself: that is `cache`.

pub mod anthropic;
pub mod embeddings;
pub mod flight;
pub mod handler;
pub mod replay;
pub mod responses;
pub mod sse;
pub mod tee;
pub mod wire;
