//! `[server]`: the listeners, the drain period and the request limits.
//!
//! Owns the raw section, its typed settings and their `load()`. It must never
//! open a socket: it only parses addresses.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::{at_least_one, duration, invalid, ConfigError, Errors, Overrides};

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Proxy listener.
    #[serde(default = "d_listen")]
    pub listen: String,
    /// Admin listener (health, readiness, metrics).
    #[serde(default = "d_admin_listen")]
    pub admin_listen: String,
    /// How long in-flight requests may run after SIGTERM.
    #[serde(default = "d_drain_timeout")]
    pub drain_timeout: String,
    /// Largest request body read for a cache lookup; larger ones are forwarded uncached.
    #[serde(default = "d_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest upstream answer that is kept for the cache; larger ones are passed on uncached.
    #[serde(default = "d_max_answer_bytes")]
    pub max_answer_bytes: u64,
    /// Longest wait for a new connection's first request line and headers
    /// (and for the next request on an idle keep-alive connection).
    #[serde(default = "d_header_read_timeout")]
    pub header_read_timeout: String,
    /// Longest silence between two pieces of a request body.
    #[serde(default = "d_body_read_timeout")]
    pub body_read_timeout: String,
    /// Most client connections the proxy holds open at once; past this, new
    /// ones wait in the listen backlog. Capped at start by the process's
    /// file-descriptor limit.
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
}

defaults! {
    d_listen: String = "127.0.0.1:8080".into();
    d_admin_listen: String = "127.0.0.1:5000".into();
    d_drain_timeout: String = "30s".into();
    d_max_body_bytes: u64 = 4 * 1024 * 1024;
    d_max_answer_bytes: u64 = 8 * 1024 * 1024;
    d_header_read_timeout: String = "10s".into();
    d_body_read_timeout: String = "30s".into();
    d_max_connections: usize = 10_000;
}

default_from_serde!(RawServer);

/// Listeners and limits.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Grace period on shutdown.
    pub drain_timeout: Duration,
    /// Body read cap on cacheable routes.
    pub max_body_bytes: usize,
    /// Answer size cap for caching.
    pub max_answer_bytes: usize,
    /// Longest wait for a connection's request headers (the first request's,
    /// or the next one's on an idle keep-alive connection).
    pub header_read_timeout: Duration,
    /// Longest silence between two pieces of a request body.
    pub body_read_timeout: Duration,
    /// Most client connections held open at once on the proxy listener.
    pub max_connections: usize,
}

fn addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|e| {
        invalid(
            key,
            format!("`{s}` is not an address like 127.0.0.1:8080: {e}"),
        )
    })
}

/// `[server]` into [`ServerSettings`]; `--listen` and `--admin-listen` win.
pub(super) fn load(errs: &mut Errors, s: &RawServer, o: &Overrides) -> ServerSettings {
    let fallback_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = ServerSettings {
        listen: errs.take(
            addr("server.listen", o.listen.as_deref().unwrap_or(&s.listen)),
            fallback_addr,
        ),
        admin_listen: errs.take(
            addr(
                "server.admin_listen",
                o.admin_listen.as_deref().unwrap_or(&s.admin_listen),
            ),
            fallback_addr,
        ),
        drain_timeout: duration(errs, "server.drain_timeout", &s.drain_timeout),
        max_body_bytes: s.max_body_bytes as usize,
        max_answer_bytes: s.max_answer_bytes as usize,
        header_read_timeout: duration(errs, "server.header_read_timeout", &s.header_read_timeout),
        body_read_timeout: duration(errs, "server.body_read_timeout", &s.body_read_timeout),
        max_connections: at_least_one(errs, "server.max_connections", s.max_connections),
    };
    for (key, d) in [
        ("server.header_read_timeout", server.header_read_timeout),
        ("server.body_read_timeout", server.body_read_timeout),
    ] {
        if d.is_zero() {
            errs.push(key, "must be longer than 0");
        }
    }
    server
}
